"""Assembling an untrained SPHINX-X from the public formats of its parts (tiny random stand-ins, `parts_factory`).

The assembled model must reproduce each part (LLM logits, ConvNeXt trunk features, DINOv2 features at 224 px), load
with the Auto classes, train and generate, for every SPHINX-X preset; bad parts fail with a clear `ConversionError`
and leave no output behind.
"""

import copy
import functools
import json
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from sphinx_x.conversion.accessory import dinov2_position_table
from sphinx_x.conversion.assemble import assemble, load_convnext_trunk
from sphinx_x.conversion.common import ConversionError
from sphinx_x.conversion.internlm2 import internlm2_to_llama
from sphinx_x.training.collator import SphinxXDataCollator

import parts_factory


# preset -> (LLM stand-in, ConvNeXt stand-in), so that full assemblies cover every format: LLMs as HF Llama
# (safetensors; legacy .bin with RoPE buffers, multi-head), sharded Mixtral and sharded-.bin InternLM2; ConvNeXt as
# open_clip safetensors / .bin and timm.
ASSEMBLIES = {
    "sphinx-x-tiny": ("llama", "open_clip_safetensors"),
    "sphinx-x-internlm2-7b": ("internlm2", "open_clip_bin"),
    "sphinx-x-llama2-13b": ("llama_mha", "timm"),
    "sphinx-x-moe": ("mixtral", "open_clip_safetensors"),
}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Every stand-in written once under `root / name`, with the source models and the raw ConvNeXt trunk."""
    root = tmp_path_factory.mktemp("parts")
    trunk = parts_factory.convnext_trunk()
    parts_factory.write_open_clip_convnext(root / "open_clip_safetensors", trunk, safetensors=True)
    parts_factory.write_open_clip_convnext(root / "open_clip_bin", trunk, safetensors=False)
    parts_factory.write_timm_convnext(root / "timm", trunk)
    sources = {
        "llama": parts_factory.write_llama(root / "llama"),
        "llama_mha": parts_factory.write_llama(root / "llama_mha", seed=5, legacy_bin=True, num_key_value_heads=4),
        "mixtral": parts_factory.write_mixtral(root / "mixtral"),
        "internlm2": parts_factory.write_internlm2(root / "internlm2"),
        "dinov2": parts_factory.write_dinov2(root / "dinov2"),
    }
    return {"root": root, "trunk": trunk, "sources": sources}


@pytest.fixture(scope="module")
def assembled(parts, tmp_path_factory):
    """Each preset assembled once in float32 (exact comparisons): `{preset: folder}`."""
    out = tmp_path_factory.mktemp("assembled")
    root = parts["root"]
    return {
        preset: assemble(preset, root / llm, root / convnext, root / "dinov2", out / preset, dtype=torch.float32)
        for preset, (llm, convnext) in ASSEMBLIES.items()
    }


def timm_convnext_features(trunk: dict, pixels: torch.Tensor) -> torch.Tensor:
    """timm's ConvNeXt trunk followed by `head.norm`, computed from the raw tensors (what OpenCLIP's trunk returns
    once SPHINX drops pooling): `[N, 3, S, S]` -> `[N, C, S/32, S/32]`. LayerNorm eps 1e-5 everywhere."""

    def channels_norm(x, prefix):  # timm LayerNorm2d: over the channels of a channels-first map
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], trunk[prefix + "weight"], trunk[prefix + "bias"], eps=1e-5)
        return x.permute(0, 3, 1, 2)

    x = channels_norm(F.conv2d(pixels, trunk["stem.0.weight"], trunk["stem.0.bias"], stride=4), "stem.1.")
    for stage, depth in enumerate(parts_factory.CONVNEXT_DEPTHS):
        prefix = f"stages.{stage}."
        if stage > 0:
            x = channels_norm(x, prefix + "downsample.0.")
            x = F.conv2d(x, trunk[prefix + "downsample.1.weight"], trunk[prefix + "downsample.1.bias"], stride=2)
        for block in range(depth):
            p = f"{prefix}blocks.{block}."
            y = F.conv2d(x, trunk[p + "conv_dw.weight"], trunk[p + "conv_dw.bias"], padding=3, groups=x.shape[1])
            y = y.permute(0, 2, 3, 1)
            y = F.layer_norm(y, y.shape[-1:], trunk[p + "norm.weight"], trunk[p + "norm.bias"], eps=1e-5)
            y = F.linear(F.gelu(F.linear(y, trunk[p + "mlp.fc1.weight"], trunk[p + "mlp.fc1.bias"])),
                         trunk[p + "mlp.fc2.weight"], trunk[p + "mlp.fc2.bias"])
            x = x + (y * trunk[p + "gamma"]).permute(0, 3, 1, 2)
    return channels_norm(x, "head.norm.")


def load(folder):
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return model, AutoProcessor.from_pretrained(folder)


def chat(image=None, answer=None):
    content = ([{"type": "image", "image": image}] if image is not None else []) + [
        {"type": "text", "text": "What is in the picture?"}
    ]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


# ---------------------------------------------------------------------------------------------------------------
# InternLM2 -> Llama


def test_internlm2_to_llama_unpacks_wqkv_exactly(parts):
    llama = parts["sources"]["internlm2"]
    config_json = parts_factory.internlm2_config_json(llama.config)
    state, config = internlm2_to_llama(parts_factory.pack_internlm2(llama), config_json)
    expected = llama.state_dict()
    assert state.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    assert config.rope_parameters == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    assert config.max_position_embeddings == 32768 and not config.tie_word_embeddings


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("rope", "rope_scaling"),
        ("bias", "bias"),
        ("missing", "lacks tensors"),
        ("rows", "rows"),
        ("unknown", "Unexpected"),
    ],
)
def test_internlm2_to_llama_rejects_what_it_cannot_convert(parts, breakage, message):
    llama = parts["sources"]["internlm2"]
    config_json = parts_factory.internlm2_config_json(llama.config)
    state = parts_factory.pack_internlm2(llama)
    if breakage == "rope":
        config_json["rope_scaling"] = {"type": "yarn", "factor": 4.0}
    elif breakage == "bias":
        config_json["bias"] = True
    elif breakage == "missing":
        del state["model.layers.1.feed_forward.w2.weight"]
    elif breakage == "rows":
        config_json["num_key_value_heads"] = 1
    else:
        state["model.layers.0.attention.rotary.scale"] = torch.ones(1)
    with pytest.raises(ConversionError, match=message):
        internlm2_to_llama(state, config_json)


# ---------------------------------------------------------------------------------------------------------------
# The parts are reproduced


def test_convnext_formats_give_the_same_trunk(parts):
    root, trunk = parts["root"], parts["trunk"]
    for source in ("open_clip_safetensors", "open_clip_bin", "timm", "open_clip_bin/open_clip_pytorch_model.bin"):
        loaded = load_convnext_trunk(root / source)
        assert loaded.keys() == trunk.keys(), source  # the text tower, CLIP head and timm's head.fc are dropped
        assert all(torch.equal(loaded[key], trunk[key]) for key in trunk), source


@pytest.mark.parametrize("preset", list(ASSEMBLIES))
def test_text_logits_equal_the_source_llm(parts, assembled, preset):
    """Text-only, the assembled model is the LLM: same logits (for InternLM2, those of the Llama it was packed from,
    which proves the `wqkv` split, the names and the RoPE settings)."""
    model, processor = load(assembled[preset])
    source = parts["sources"][ASSEMBLIES[preset][0]]
    input_ids = torch.randint(3, parts_factory.VOCAB_SIZE, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, source(input_ids).logits, rtol=1e-5, atol=1e-5)
    # The placeholder follows the text vocabulary, in the config, the tokenizer and the processor alike.
    assert model.config.image_token_id == processor.image_token_id == parts_factory.VOCAB_SIZE
    assert processor.tokenizer.convert_ids_to_tokens(parts_factory.VOCAB_SIZE) == "<image>"


def test_vision_features_equal_the_source_encoders(parts, assembled):
    model, _ = load(assembled["sphinx-x-tiny"])
    generator = torch.Generator().manual_seed(1)

    # ConvNeXt at 512 px: the trunk incl. head.norm per position, then the spatial-mean token first.
    pixels = torch.randn(2, 3, 512, 512, generator=generator)
    expected_map = timm_convnext_features(parts["trunk"], pixels).flatten(2).transpose(1, 2)  # [2, 256, 32]
    with torch.no_grad():
        tokens = model.model.convnext(pixels).last_hidden_state
    assert tokens.shape == (2, 257, parts_factory.CONVNEXT_WIDTHS[-1])
    torch.testing.assert_close(tokens[:, 1:], expected_map, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tokens[:, 0], expected_map.mean(dim=1), rtol=1e-4, atol=1e-4)

    # DINOv2 at 224 px: the source Dinov2Model given the reference's resampled table (37x37 -> 16x16 + cls).
    source = copy.deepcopy(parts["sources"]["dinov2"])
    table = dinov2_position_table(source.embeddings.position_embeddings.detach(), 16)
    source.embeddings.position_embeddings = torch.nn.Parameter(table)
    dinov2 = model.model.dinov2.model
    assert dinov2.config.image_size == 224 and dinov2.embeddings.position_embeddings.shape == (1, 257, 32)
    views = torch.randn(2, 3, 224, 224, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(dinov2(views).last_hidden_state, source(views).last_hidden_state)


# ---------------------------------------------------------------------------------------------------------------
# Ready for one-stage training


@pytest.mark.parametrize("preset", list(ASSEMBLIES))
def test_assembled_model_trains_and_generates(assembled, preset):
    model, processor = load(assembled[preset])
    config = model.config
    assert config.use_skip_tokens and processor.image_processor.skip_padded_tiles
    assert processor.image_processor.tokens_per_view == config.tokens_per_view == 259
    assert model.config.text_config.model_type == ("mixtral" if preset == "sphinx-x-moe" else "llama")

    image = Image.new("RGB", (900, 300), (200, 30, 30))  # 3:1 at the top-left: the bottom two tiles are skipped
    inputs = processor.apply_chat_template(
        chat(image, "A red bar."), tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["image_tile_mask"].tolist() == [[True, True, False, False]]
    labels = inputs["input_ids"].clone()
    model.train()
    # Reference one-stage training (`mm_stage2`, the recipes' default): everything but the visual encoders trains.
    model.model.convnext.requires_grad_(False)
    model.model.dinov2.requires_grad_(False)
    optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], lr=1e-3)
    losses = []
    for step in range(5):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        if step == 0:  # the new parameters are in the graph, the skip embedding included
            tags = model.model.image_tags
            for param in (tags.skip, tags.start, model.model.visual_projector.linear.weight):
                assert param.grad is not None and param.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]

    model.eval()
    prompt = processor.apply_chat_template(
        chat(image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert isinstance(processor.decode(generated[0, prompt["input_ids"].shape[1]:]), str)


def test_writes_bfloat16_by_default_with_remote_code(parts, tmp_path):
    root = parts["root"]
    dst = assemble("sphinx-x-tiny", root / "llama", root / "timm", root / "dinov2", tmp_path / "out")
    with safe_open(dst / "model.safetensors", framework="pt") as weights:
        assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"BF16"}
    config = json.loads((dst / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_sphinx_x.SphinxXForConditionalGeneration"
    assert "_name_or_path" not in config["text_config"]  # no local source paths in a publishable config
    assert {"modeling_sphinx_x.py", "configuration_sphinx_x.py", "processing_sphinx_x.py",
            "image_processing_sphinx_x.py", "chat_template.jinja", "generation_config.json"} <= {
        path.name for path in dst.iterdir()}
    generation = json.loads((dst / "generation_config.json").read_text())
    assert generation["stop_token_sequences"] and generation["pad_token_id"] == 0


def test_a_padded_embedding_table_gives_the_placeholder_a_spare_row(parts, tmp_path):
    """An LLM with more embedding rows than tokens: `<image>` takes the first spare row, consistently."""
    root = parts["root"]
    parts_factory.write_llama(tmp_path / "padded", vocab_size=520)
    dst = assemble("sphinx-x-tiny", tmp_path / "padded", root / "timm", root / "dinov2", tmp_path / "out",
                   dtype=torch.float32)
    model, processor = load(dst)
    assert model.config.text_config.vocab_size == 520
    assert model.config.image_token_id == processor.image_token_id == parts_factory.VOCAB_SIZE
    prompt = processor.apply_chat_template(
        chat(Image.new("RGB", (300, 300), (0, 90, 200))), add_generation_prompt=True, tokenize=True,
        return_dict=True, return_tensors="pt",
    )
    with torch.no_grad():
        assert model.generate(**prompt, max_new_tokens=2).shape[1] == prompt["input_ids"].shape[1] + 2


# ---------------------------------------------------------------------------------------------------------------
# Clear errors, no output left behind


def break_parts(parts, tmp_path, breakage):
    """(preset, llm, convnext, dinov2) with one part broken as `breakage` says."""
    root = parts["root"]
    args = {"preset": "sphinx-x-tiny", "llm": root / "llama", "convnext": root / "open_clip_safetensors",
            "dinov2": root / "dinov2"}
    broken = tmp_path / "broken"
    if breakage == "moe_preset_with_llama":
        args["preset"] = "sphinx-x-moe"
    elif breakage == "llama_preset_with_internlm2":
        args["llm"] = root / "internlm2"
    elif breakage == "internlm2_preset_with_mixtral":
        args.update(preset="sphinx-x-internlm2-7b", llm=root / "mixtral")
    elif breakage == "unknown_preset":
        args["preset"] = "sphinx-tiny"
    elif breakage == "no_llm_weights":
        shutil.copytree(root / "llama", broken, ignore=shutil.ignore_patterns("*.safetensors"))
        args["llm"] = broken
    elif breakage == "missing_shard":
        shutil.copytree(root / "internlm2", broken, ignore=shutil.ignore_patterns("*00002-of-00002.bin"))
        args.update(preset="sphinx-x-internlm2-7b", llm=broken)
    elif breakage == "no_tokenizer":
        shutil.copytree(root / "llama", broken, ignore=shutil.ignore_patterns("tokenizer*"))
        args["llm"] = broken
    elif breakage == "tokenizer_too_long":
        parts_factory.write_llama(broken, vocab_size=500)
        args["llm"] = broken
    elif breakage == "no_convnext_checkpoint":
        shutil.copytree(root / "open_clip_safetensors", broken, ignore=shutil.ignore_patterns("*.safetensors"))
        args["convnext"] = broken
    elif breakage == "convnext_without_trunk":
        broken.mkdir()
        with safe_open(root / "open_clip_safetensors" / "open_clip_model.safetensors", framework="pt") as clip:
            text_only = {key: clip.get_tensor(key) for key in clip.keys() if not key.startswith("visual.trunk.")}
        save_file(text_only, broken / "open_clip_model.safetensors")
        args["convnext"] = broken
    elif breakage == "no_dinov2_weights":
        shutil.copytree(root / "dinov2", broken, ignore=shutil.ignore_patterns("*.safetensors"))
        args["dinov2"] = broken
    elif breakage == "dinov2_is_a_llama":
        args["dinov2"] = root / "llama"
    elif breakage == "llm_config_is_a_list":
        shutil.copytree(root / "llama", broken)
        (broken / "config.json").write_text("[]")
        args["llm"] = broken
    return args


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("moe_preset_with_llama", "sphinx-x-moe is assembled from a mixtral LLM.*'llama'.*--preset sphinx-x-tiny"),
        ("llama_preset_with_internlm2", "'internlm2'; for this LLM use --preset sphinx-x-internlm2-7b"),
        ("internlm2_preset_with_mixtral", "assembled from a internlm2 LLM.*'mixtral'"),
        ("unknown_preset", "Unknown SPHINX-X preset"),
        ("no_llm_weights", "No LLM weights"),
        ("missing_shard", "lists shards that are missing"),
        ("no_tokenizer", "no tokenizer.model or tokenizer.json"),
        ("tokenizer_too_long", "512 tokens but the LLM embeds only 500"),
        ("no_convnext_checkpoint", "No ConvNeXt checkpoint"),
        ("convnext_without_trunk", "holds no ConvNeXt trunk"),
        ("no_dinov2_weights", "No DINOv2 weights"),
        ("dinov2_is_a_llama", "not an HF Dinov2Model"),
        ("llm_config_is_a_list", "config.json does not hold a JSON object"),
    ],
)
def test_bad_parts_fail_clearly_and_write_nothing(parts, tmp_path, breakage, message):
    args = break_parts(parts, tmp_path, breakage)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match=message):
        assemble(args["preset"], args["llm"], args["convnext"], args["dinov2"], out / "model")
    assert list(out.iterdir()) == []  # neither the output nor a temporary folder


def test_an_existing_output_is_replaced_only_with_overwrite(parts, tmp_path):
    root = parts["root"]
    args = ("sphinx-x-tiny", root / "llama", root / "timm", root / "dinov2")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="overwrite"):
        assemble(*args, dst)
    assert [path.name for path in dst.iterdir()] == ["keep.txt"]
    assemble(*args, dst, overwrite=True)
    assert (dst / "config.json").is_file() and not (dst / "keep.txt").exists()


# ---------------------------------------------------------------------------------------------------------------
# The demo preset: a tied BPE LLM in ChatML, a DINOv2 of another size, a new ConvNeXt


@pytest.fixture(scope="module")
def demo_assembled(parts):
    root = parts["root"]
    llm = parts_factory.write_bpe_llama(root / "bpe_llama")
    dinov2 = parts_factory.write_plain_dinov2(root / "plain_dinov2")
    folder = assemble("sphinx-x-demo", root / "bpe_llama", None, root / "plain_dinov2", root / "demo",
                      dtype=torch.float32)
    return folder, llm, dinov2


def test_demo_preset_takes_a_tied_bpe_llm_and_a_new_convnext(demo_assembled):
    folder, llm, _ = demo_assembled
    model, processor = load(folder)
    config = model.config
    assert config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    assert torch.equal(model.lm_head.weight, llm.lm_head.weight)
    assert config.convnext_config.hidden_sizes == [32, 64, 128, 192] and config.token_grid_size == 8
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == len(processor.tokenizer) - 1
    # The LLM's own chat format, with the image in its turn; answers end with <|im_end|>, which stops generation.
    rendered = processor.apply_chat_template(chat("x.png", "a cat"), tokenize=False)
    assert rendered.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\n<image>What is in the picture?" in rendered
    assert rendered.endswith("<|im_start|>assistant\na cat<|im_end|>\n")
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert not model.generation_config.stop_token_sequences
    ids = processor.tokenizer("<|im_start|>user\nWhat is in the picture?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, llm(input_ids=ids).logits, atol=1e-5)


def test_demo_preset_dinov2_features_equal_the_source(demo_assembled):
    folder, _, dinov2 = demo_assembled
    model, _ = load(folder)
    source = copy.deepcopy(dinov2)  # given the reference's resampled table (37x37 -> 8x8 + cls) for 112-px views
    source.embeddings.position_embeddings = torch.nn.Parameter(
        dinov2_position_table(source.embeddings.position_embeddings.detach(), 8)
    )
    views = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model.model.dinov2.model(views).last_hidden_state
        torch.testing.assert_close(got, source(views).last_hidden_state)
    assert got.shape == (2, 65, 48)


def test_demo_preset_trains_its_tags_under_lora(demo_assembled):
    from peft import LoraConfig, get_peft_model

    from sphinx_x.training.models import LLM_LINEAR_LAYERS

    model, processor = load(demo_assembled[0])
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=LLM_LINEAR_LAYERS,
                                                  modules_to_save=["visual_projector", "image_tags", "convnext"]))
    trainable = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    assert any("image_tags.modules_to_save" in name for name in trainable)
    assert any("convnext.modules_to_save" in name for name in trainable)
    assert not any(".dinov2." in name for name in trainable)
    inputs = processor.apply_chat_template(chat(Image.new("RGB", (90, 30), "red"), "red"), tokenize=True,
                                           return_dict=True, return_tensors="pt")
    peft_model(**inputs, labels=inputs["input_ids"]).loss.backward()
    tags = peft_model.base_model.model.model.image_tags.modules_to_save["default"]
    assert tags.start.grad.abs().sum() > 0 and tags.skip.grad.abs().sum() > 0  # a 3:1 image skips two tiles


@pytest.mark.parametrize("preset, convnext, message", [
    ("sphinx-x-demo", "timm", "takes no --convnext"),
    ("sphinx-x-tiny", None, "needs --convnext"),
])
def test_convnext_is_new_only_for_the_demo_preset(parts, tmp_path, preset, convnext, message):
    root = parts["root"]
    with pytest.raises(ConversionError, match=message):
        assemble(preset, root / "llama", None if convnext is None else root / convnext, root / "dinov2", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_spelled_answers_train_one_character_per_token(demo_assembled):
    # The demo's kind of tokenizer (byte-level BPE, ChatML), whose merges join characters of "circle".
    processor = load(demo_assembled[0])[1]
    tokenizer = processor.tokenizer
    encode = functools.partial(tokenizer.encode, add_special_tokens=False)
    extra = len("circle") - len(encode("circle"))
    assert extra > 0
    example = {"messages": [{"role": "user", "content": "What is written?"}, {"role": "assistant", "content": "It is"},
                            {"role": "user", "content": "And the word?"}, {"role": "assistant", "content": "circle"}],
               "images": [Image.new("RGB", (60, 60), (0, 0, 255))]}
    text_only = {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "The circle."}],
                 "images": []}
    merged = SphinxXDataCollator(processor=processor, assistant_only_loss=True)([dict(example), dict(text_only)])
    spelled = SphinxXDataCollator(processor=processor, assistant_only_loss=True,
                                  spelled_answers=re.compile("[a-z]{6}"))([dict(example), dict(text_only)])

    end = [tokenizer.eos_token_id]
    assert merged["labels"][0][merged["labels"][0] != -100].tolist() == encode("It is") + end + encode("circle") + end
    characters = tokenizer.convert_tokens_to_ids(list("circle"))
    assert spelled["labels"][0][spelled["labels"][0] != -100].tolist() == encode("It is") + end + characters + end
    # More positions in the spelled row, the same text; the other row and the images are as they were.
    assert spelled["attention_mask"].sum(1).tolist() == [int(merged["attention_mask"][0].sum()) + extra,
                                                         int(merged["attention_mask"][1].sum())]
    assert tokenizer.decode(spelled["input_ids"][0][spelled["attention_mask"][0] == 1]) == tokenizer.decode(
        merged["input_ids"][0][merged["attention_mask"][0] == 1])
    width = merged["input_ids"].shape[1]
    assert spelled["input_ids"].shape[1] == width + extra
    assert torch.equal(spelled["labels"][1, :width], merged["labels"][1])
    assert torch.equal(spelled["input_ids"][1, :width][merged["attention_mask"][1] == 1],
                       merged["input_ids"][1][merged["attention_mask"][1] == 1])
    assert torch.equal(spelled["pixel_values"], merged["pixel_values"])

    # `max_length` counts the spelled tokens: a record that fits only in merges is skipped, not cut.
    length = int(spelled["attention_mask"][0].sum())
    for max_length, fits in ((length, True), (length - 1, False)):
        collator = SphinxXDataCollator(processor=processor, assistant_only_loss=True, max_length=max_length,
                                       spelled_answers=re.compile("[a-z]{6}"))
        collator([dict(example)])
        assert collator.skipped.totals()["too_long"] == (0 if fits else 1)

    # An answer with a character that is no token of its own is skipped, not trained on other tokens.
    unspellable = SphinxXDataCollator(processor=processor, assistant_only_loss=True, spelled_answers=re.compile(".."))
    unspellable([{**example, "messages": [*example["messages"][:3], {"role": "assistant", "content": "Ж☃"}]}])
    assert unspellable.skipped.totals()["malformed"] == 1
