"""Shared fixtures: the reference checkpoint made by the original code, its conversion, and a tiny random SPHINX-X."""

from pathlib import Path

import pytest
import torch

import sphinx_x
from sphinx_x.conversion.accessory import build_tokenizer, convert_accessory, generation_config
from sphinx_x.presets import preset_config


FIXTURE = Path(__file__).parent / "fixtures" / "sphinx-tiny-1k"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory) -> Path:
    """The fixture checkpoint converted once per session (float32, reference geometry, remote code included)."""
    return convert_accessory(
        FIXTURE / "checkpoint", tmp_path_factory.mktemp("converted") / "sphinx-tiny-1k-hf", dinov2_num_heads=4
    )


def make_tiny_model_and_processor(preset: str = "tiny-random", seed: int = 0, **overrides):
    """A random SPHINX-X of a tiny preset with a matching processor (the fixture's 512-piece tokenizer)."""
    torch.manual_seed(seed)
    config = preset_config(preset, **overrides)
    model = sphinx_x.SphinxXForConditionalGeneration(config).eval()
    tokenizer = build_tokenizer(FIXTURE / "checkpoint")
    image_processor = sphinx_x.SphinxXImageProcessor.from_model_config(config)
    processor = sphinx_x.SphinxXProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.generation_config = generation_config(tokenizer)
    return model, processor


def chat_inputs(processor, conversations, **processor_kwargs):
    """Model inputs for a batch of conversations, with the generation prompt (e.g. `padding=True` for batches)."""
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=processor_kwargs or None,
    )


@pytest.fixture(scope="session")
def tiny_model_and_processor():
    return make_tiny_model_and_processor()


def pytest_configure(config):
    """Markers that transformers' vendored `test_modeling_common.py` uses (transformers registers them in its own
    conftest)."""
    markers = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test")
    for marker in markers:
        config.addinivalue_line("markers", f"{marker}: transformers test marker")
