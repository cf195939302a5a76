"""SphinxXConfig, its presets, and the Auto-class registration done by `import sphinx_x`."""

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    ConvNextConfig,
)

import sphinx_x
from sphinx_x.presets import preset_config


EXPECTED = {
    # preset: (LLM type, hidden, tokens per view, image positions of a full canvas, fused feature width)
    "sphinx-x-tiny": ("llama", 2048, 259, 1295, 4608),
    "sphinx-x-internlm2-7b": ("llama", 4096, 259, 1295, 4608),
    "sphinx-x-llama2-13b": ("llama", 5120, 259, 1295, 4608),
    "sphinx-x-moe": ("mixtral", 4096, 259, 1295, 4608),
    "sphinx-tiny": ("llama", 2048, 259, 259, 4608),
    "sphinx-tiny-1k": ("llama", 2048, 259, 1295, 4608),
    "sphinx": ("llama", 5120, 291, 291, 5632),
    "sphinx-1k": ("llama", 5120, 291, 1455, 5632),
    "sphinx-v2-1k": ("llama", 5120, 291, 1455, 5632),
    "sphinx-moe": ("mixtral", 4096, 291, 291, 5632),
    "sphinx-moe-1k": ("mixtral", 4096, 291, 1455, 5632),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_have_the_reference_token_counts(name):
    config = preset_config(name)
    llm, hidden, per_view, full_image, features = EXPECTED[name]
    rows, cols = config.image_grid
    views = 1 + rows * cols if rows * cols > 1 else 1
    assert config.text_config.model_type == llm and config.text_config.hidden_size == hidden
    assert config.tokens_per_view == per_view
    assert views * config.tokens_per_view == full_image
    assert config.vision_feature_size == features
    assert config.use_skip_tokens == name.startswith("sphinx-x")
    assert config.image_token_id == config.text_config.vocab_size


def test_feature_widths_are_derived_from_the_encoders():
    config = preset_config("tiny-random", convnext_config=ConvNextConfig(hidden_sizes=[8, 16, 24, 40],
                                                                       depths=[1, 1, 1, 1], image_size=512))
    assert config.vision_feature_size == 40 + config.dinov2_config.hidden_size
    model = sphinx_x.SphinxXForConditionalGeneration(config)
    assert model.model.visual_projector.linear.in_features == config.vision_feature_size


def test_demo_preset_grids_match_with_a_2_px_convnext_stem():
    config = preset_config("sphinx-x-demo")
    convnext = config.convnext_config
    assert (convnext.patch_size, convnext.num_stages, convnext.image_size) == (2, 4, 128)
    # ConvNeXt: 2 px, then three 2x downsamplings of its 128-px views; DINOv2: 14-px patches of 112-px tiles.
    assert config.encoder_grid_size("convnext") == config.encoder_grid_size("dinov2") == 8
    assert config.tokens_per_view == 67 and config.canvas_size == (224, 224)
    assert config.tie_word_embeddings and config.text_config.tie_word_embeddings
    torch.manual_seed(0)
    model = sphinx_x.SphinxXForConditionalGeneration(config)
    encoder = model.model.convnext
    assert encoder(torch.randn(2, 3, 128, 128)).last_hidden_state.shape == (2, 1 + 64, convnext.hidden_sizes[-1])
    # The preset's wider init reaches the composite model's weights (not transformers' default std 0.02).
    stem = encoder.model.embeddings.patch_embeddings.weight
    assert 0.06 < stem.std().item() < 0.09


def test_config_round_trip_keeps_absent_encoders_absent(tmp_path):
    config = preset_config("tiny-random")
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, sphinx_x.SphinxXConfig)
    assert reloaded.clip_config is None and reloaded.qformer_config is None
    assert {**reloaded.to_dict(), "_name_or_path": ""} == config.to_dict()


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="at least one grid encoder"):
        sphinx_x.SphinxXConfig(qformer_config={"model_type": "blip-2"})
    default = sphinx_x.SphinxXConfig()  # no encoder named: the SPHINX-X pair
    assert default.convnext_config.hidden_sizes[-1] == 3072 and default.dinov2_config.hidden_size == 1536
    with pytest.raises(ValueError, match="Unknown preset"):
        preset_config("sphinx-xl")
    with pytest.raises(ValueError, match="cannot be fused"):
        preset_config("tiny-random", dinov2_config={"model_type": "dinov2", "image_size": 210, "patch_size": 14})
    with pytest.raises(ValueError, match="cannot be fused"):  # a 2-px stem and four stages: 32x32, DINOv2 16x16
        preset_config("tiny-random", convnext_config=ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                                                    patch_size=2, image_size=512))


def test_import_registers_the_auto_classes(tmp_path):
    config = preset_config("tiny-random")
    assert isinstance(AutoConfig.for_model("sphinx_x"), sphinx_x.SphinxXConfig)
    assert type(AutoModel.from_config(config)) is sphinx_x.SphinxXModel
    assert type(AutoModelForImageTextToText.from_config(config)) is sphinx_x.SphinxXForConditionalGeneration
    config.save_pretrained(tmp_path)
    sphinx_x.SphinxXImageProcessor().save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is sphinx_x.SphinxXImageProcessor


def test_model_conventions(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    assert model.base_model_prefix == "model" and model.base_model is model.model
    assert {"LlamaDecoderLayer", "Dinov2Layer"} <= set(model._no_split_modules)
    assert model.model.language_model.config._attn_implementation == "sdpa"
    assert model.supports_gradient_checkpointing
    assert model.get_output_embeddings() is model.lm_head
    assert type(AutoProcessor).__name__ and processor.image_token_id == model.config.image_token_id
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()  # untied, as the reference


def test_four_encoder_layout_runs():
    """The SPHINX (v1) mixture: CLIP + ConvNeXt + DINOv2 + Q-Former, 291 positions per view."""
    from transformers import Blip2Config, CLIPVisionConfig

    from conftest import make_tiny_model_and_processor

    clip = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            image_size=224, patch_size=14, hidden_act="gelu")
    qformer = Blip2Config(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 224, "patch_size": 14},
        qformer_config={"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 32, "encoder_hidden_size": 16},
        num_query_tokens=32,
    )
    model, processor = make_tiny_model_and_processor(clip_config=clip, qformer_config=qformer)
    assert model.config.tokens_per_view == 291
    pixel_values = torch.randn(1, 3, 1024, 1024)
    features = model.model.get_image_features(pixel_values, torch.tensor([[True, True, False, False]]))
    assert features.pooler_output[0].shape == (3 * 291 + 2, 64)
    assert model.model.visual_projector.linear.in_features == 16 + 32 + 32
