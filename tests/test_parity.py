"""The converted SPHINX-Tiny-1k fixture reproduces the original LLaMA2-Accessory code (pixels, ids, features, logits,
greedy tokens), in this process and as remote code in a process that cannot import `sphinx_x`."""

import json
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from remote_code import run_without_sphinx_x


QUESTION = "Describe the image in detail."


def chat_inputs(processor, image_path):
    messages = [{"role": "user", "content": [{"type": "image", "image": str(image_path)},
                                             {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.fixture(scope="module")
def reference(fixture_dir):
    return {
        **torch.load(fixture_dir / "reference_outputs.pt", weights_only=True),
        **torch.load(fixture_dir / "vision_intermediates.pt", weights_only=True),
        "pixel_values": np.load(fixture_dir / "inputs" / "pixel_values_1024.npz")["pixel_values"],
        "prompt": (fixture_dir / "inputs" / "prompt.txt").read_text(),
    }


@pytest.fixture(scope="module")
def converted(converted_dir):
    model = AutoModelForImageTextToText.from_pretrained(converted_dir).eval()
    processor = AutoProcessor.from_pretrained(converted_dir)
    return model, processor


@pytest.fixture(scope="module")
def inputs(converted, fixture_dir):
    return chat_inputs(converted[1], fixture_dir / "inputs" / "synthetic_640x320.png")


def test_pixels_equal_reference(inputs, reference):
    assert inputs["pixel_values"].shape == (1, 3, 1024, 1024)
    assert np.abs(inputs["pixel_values"][0].numpy() - reference["pixel_values"]).max() <= 1e-5
    assert inputs["image_tile_mask"].all()  # released layout: every tile encoded


def test_chat_template_gives_reference_ids(converted, inputs, reference):
    model, processor = converted
    ids = inputs["input_ids"][0].tolist()
    ref = reference["token_ids"].tolist()
    image_id = model.config.image_token_id
    assert ids[0] == 1
    assert ids[1:1296] == [image_id] * 1295  # the image block right after BOS
    assert ids[1296:] == ref[1:]
    assert ids.count(image_id) == 1295
    # The template renders the reference prompt text exactly.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == "<s><image>" + reference["prompt"]


def test_vision_features_match_reference(converted, inputs, reference):
    model = converted[0].model
    with torch.no_grad():
        views = torch.ones(1, 5, dtype=torch.bool)
        from sphinx_x.modeling_sphinx_x import build_views

        convnext = model.convnext(build_views(inputs["pixel_values"], 512, [2, 2], 512, views)).last_hidden_state
        dinov2 = model.dinov2(build_views(inputs["pixel_values"], 224, [2, 2], 512, views)).last_hidden_state
        features = model.get_image_features(inputs["pixel_values"], inputs["image_tile_mask"])
    convnext_map = convnext[:, 1:].reshape(5, 16, 16, -1).permute(0, 3, 1, 2)
    assert (convnext_map - reference["convnext_feature_map"]).abs().max() <= 1e-4
    assert torch.allclose(convnext[:, 0], convnext[:, 1:].mean(1))  # the mean token comes first
    assert (dinov2 - reference["dinov2_tokens"]).abs().max() <= 1e-4
    assert (features.last_hidden_state - reference["image_tokens_per_view"][:, 0]).abs().max() <= 1e-4
    block = features.pooler_output[0]
    assert block.shape == (1295, 64)
    assert torch.equal(block[0], model.image_tags.start) and torch.equal(block[258], model.image_tags.end)


def test_logits_match_reference(converted, inputs, reference):
    model = converted[0]
    with torch.no_grad():
        logits_mm = model(**inputs).logits[0, 1295:]  # row 0 = last image position, as the reference returns
        logits_text = model(input_ids=reference["token_ids"][None]).logits[0]
    assert (logits_mm - reference["logits_mm"]).abs().max() <= 2e-4
    assert (logits_text - reference["logits_text"]).abs().max() <= 2e-4


def test_greedy_generation_matches_reference(converted, inputs, reference):
    model = converted[0]
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, return_dict_in_generate=True, output_logits=True)
    new_tokens = output.sequences[0, inputs["input_ids"].shape[1]:]
    assert new_tokens.tolist() == reference["greedy_ids"].tolist()
    step_logits = torch.stack(output.logits, dim=1)[0]
    assert (step_logits - reference["gen_step_logits"]).abs().max() <= 2e-4


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, torch

    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    folder, fixture = sys.argv[1], sys.argv[2]
    try:
        import sphinx_x  # noqa: F401
        raise SystemExit("sphinx_x must not be importable here")
    except ImportError:
        pass
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    ref = torch.load(fixture + "/reference_outputs.pt", weights_only=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": fixture + "/inputs/synthetic_640x320.png"},
                                             {"type": "text", "text": "Describe the image in detail."}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    pixels = np.load(fixture + "/inputs/pixel_values_1024.npz")["pixel_values"]
    with torch.no_grad():
        logits = model(**inputs).logits[0, 1295:]
        greedy = model.generate(**inputs, max_new_tokens=8)[0, inputs["input_ids"].shape[1]:]
    print(json.dumps({
        "classes": [type(config).__module__, type(model).__module__, type(processor).__module__,
                    type(processor.image_processor).__module__, type(base).__name__],
        "pixel_diff": float(np.abs(inputs["pixel_values"][0].numpy() - pixels).max()),
        "text_ids_equal": inputs["input_ids"][0, 1296:].tolist() == ref["token_ids"][1:].tolist(),
        "logits_diff": float((logits - ref["logits_mm"]).abs().max()),
        "greedy": greedy.tolist(),
    }))
    """
)


def test_remote_code_in_clean_process(converted_dir, fixture_dir, reference, tmp_path):
    result = run_without_sphinx_x(REMOTE_SCRIPT, converted_dir, fixture_dir, cwd=tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules") for module in report["classes"][:4]), report["classes"]
    assert report["classes"][4] == "SphinxXModel"
    assert report["pixel_diff"] <= 1e-5
    assert report["text_ids_equal"]
    assert report["logits_diff"] <= 2e-4
    assert report["greedy"] == reference["greedy_ids"].tolist()
