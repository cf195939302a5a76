"""Named SphinxXConfig presets: the four SPHINX-X sizes, the released SPHINX layouts, and tiny ones for tests."""

from transformers import Blip2Config, CLIPVisionConfig, ConvNextConfig, Dinov2Config, LlamaConfig, MixtralConfig

from .configuration_sphinx_x import CONVNEXT_XXLARGE, DINOV2_GIANT, SphinxXConfig


def convnext_xxlarge(view_size: int = 512) -> ConvNextConfig:
    return ConvNextConfig(**{**CONVNEXT_XXLARGE, "image_size": view_size})


def dinov2_giant() -> Dinov2Config:
    """Its positional table is resampled to the 16x16 grid of 224-px views by the converters."""
    return Dinov2Config(**DINOV2_GIANT)


def clip_large() -> CLIPVisionConfig:
    """OpenAI CLIP ViT-L/14 with exact GELU, as the reference builds it with `pretrained=None` (spec 12.9)."""
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
    )


def blip2_qformer() -> Blip2Config:
    """The BLIP-2 (Salesforce/blip2-opt-2.7b) vision tower and Q-Former bundled with LLaMA2-Accessory."""
    return Blip2Config(
        vision_config={
            "hidden_size": 1408,
            "intermediate_size": 6144,
            "num_hidden_layers": 39,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            "layer_norm_eps": 1e-6,
            "qkv_bias": True,
        },
        qformer_config={
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "cross_attention_frequency": 2,
            "encoder_hidden_size": 1408,
            "layer_norm_eps": 1e-12,
        },
        num_query_tokens=32,
    )


def llama(
    hidden, intermediate, layers, heads, kv_heads, vocab=32000, theta=10000.0, max_positions=4096, tie=False
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def mixtral(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, experts=8, vocab=32000) -> MixtralConfig:
    return MixtralConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_local_experts=experts,
        num_experts_per_tok=2,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        sliding_window=None,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


TINYLLAMA = dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4)
LLAMA2_13B = dict(hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40)
# InternLM2-7B converted to the Llama layout (its packed `wqkv` split into q/k/v).
INTERNLM2_7B = dict(
    hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=92544, theta=1e6, max_positions=32768
)


def light_encoders() -> dict:
    """The SPHINX-X mixture of visual experts: ConvNeXt-XXL + DINOv2-g."""
    return {"convnext_config": convnext_xxlarge(), "dinov2_config": dinov2_giant()}


def four_encoders(convnext_view: int) -> dict:
    """The SPHINX (v1) mixture: CLIP-L + ConvNeXt-XXL + DINOv2-g + BLIP-2 Q-Former."""
    return {
        "clip_config": clip_large(),
        "convnext_config": convnext_xxlarge(convnext_view),
        "dinov2_config": dinov2_giant(),
        "qformer_config": blip2_qformer(),
    }


def small_encoders(
    convnext_widths,
    convnext_depths,
    convnext_view,
    dinov2_width,
    dinov2_layers,
    dinov2_heads,
    dinov2_view,
    dinov2_mlp_ratio=2,
    convnext_layer_scale=1e-6,
    convnext_patch_size=4,
    convnext_initializer_range=0.02,
    dinov2_swiglu=True,
) -> dict:
    """A narrow ConvNeXt + DINOv2 pair with SPHINX-X's norms, SwiGLU and layer scale (tests, demo, benchmarks)."""
    return {
        "convnext_config": ConvNextConfig(
            depths=list(convnext_depths),
            hidden_sizes=list(convnext_widths),
            num_stages=len(convnext_depths),
            patch_size=convnext_patch_size,
            initializer_range=convnext_initializer_range,
            layer_norm_eps=1e-5,
            image_size=convnext_view,
            layer_scale_init_value=convnext_layer_scale,
        ),
        "dinov2_config": Dinov2Config(
            hidden_size=dinov2_width,
            num_hidden_layers=dinov2_layers,
            num_attention_heads=dinov2_heads,
            mlp_ratio=dinov2_mlp_ratio,
            use_swiglu_ffn=dinov2_swiglu,
            image_size=dinov2_view,
            patch_size=14,
            layer_norm_eps=1e-6,
            layerscale_value=1.0,
        ),
    }


def tiny_encoders() -> dict:
    """Narrow, shallow encoders with the real view sizes and token grid (259 positions per view)."""
    return small_encoders([8, 16, 24, 32], [1, 1, 1, 1], 512, 32, 1, 2, 224)


SPHINX_X_CANVAS = {"tile_size": 512, "image_grid": [2, 2], "use_skip_tokens": True}


def demo_encoders() -> dict:
    """The demo model's experts on its 2x2 canvas of 112-px tiles, both with an 8x8 token grid (67 positions per
    view): the pretrained DINOv2 ViT-S/14 at 112 px (native 14-px patches on the tiles), and a small ConvNeXt trained
    from scratch to read marks and characters, at 128 px with a 2-px stem (the strokes of a 10-px digit survive)."""
    return small_encoders(
        [32, 64, 128, 192],
        [1, 1, 2, 1],
        128,
        384,
        12,
        6,
        112,
        dinov2_mlp_ratio=4,
        convnext_layer_scale=1.0,
        convnext_patch_size=2,
        convnext_initializer_range=0.08,
        dinov2_swiglu=False,
    )


# The 32 characters of the demo's printed codes (`training.synthetic.ocr.CODE_ALPHABET`: no I, O, 0 or 1).
DEMO_CODE_CHARACTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def smollm2_character_id(character: str) -> int:
    """SmolLM2's token id of an uppercase letter or a digit alone (its vocabulary writes A-Z as 49-74, 0-9 as 32-41)."""
    return 32 + int(character) if character.isdigit() else 49 + ord(character) - ord("A")


def demo_char_reader() -> ConvNextConfig:
    """The demo's character reader: a ConvNeXt of the reader's size and views, with a head for "none" plus the 32
    code characters at each cell (`training.demo.pretrain_char_reader`)."""
    config = demo_encoders()["convnext_config"]
    config.num_labels = 1 + len(DEMO_CODE_CHARACTERS)
    return config


def demo_reader_words() -> list[dict]:
    """The demo readers' word gates (`SphinxXConfig.reader_words`), in the channel layout their pretraining gives
    them: the ConvNeXt's channels 0-6 read "none" or a Set-of-Mark digit 1-6 at any cell, its channels 22-30 "none"
    or the number of shapes 0-7 at the global view's first cell (`training.demo.pretrain_reader.LABEL_CHANNELS`);
    the character reader reads "none" or a code character at the tile views' cells. SmolLM2 writes the digit d as
    token 32 + d."""
    return [
        {"channels": [0, 7], "token_ids": [32 + digit for digit in range(1, 7)], "cells": "all"},
        {"channels": [22, 31], "token_ids": [32 + count for count in range(8)], "cells": "global_first"},
        {"reader": "char_reader", "channels": [0, 1 + len(DEMO_CODE_CHARACTERS)],
         "token_ids": [smollm2_character_id(character) for character in DEMO_CODE_CHARACTERS], "cells": "tiles"},
    ]


# Half the mean side of the demo's grounding targets (0.28 of the padded square image, `training.demo.make_data`).
DEMO_HALF_SIDE = 0.14


# SmolLM2's tokens for the number words " zero" ... " nine" (one token each).
SMOLLM2_NUMBER_WORD_IDS = [6708, 582, 827, 1296, 1876, 2531, 2976, 4962, 4475, 7462]


def demo_place_words() -> dict:
    """The demo's place reader (`SphinxXConfig.place_words`) on its 16x16 tile cells: from a cell holding an object's
    centre, the LLM reads the two decimals of the left edge of a box of the mean size around the cell's centre, then
    those of its top edge, each digit a SmolLM2 number word (" zero" ... " nine"). A grounding answer
    `[0.ab,0.cd,...]` writes them as digits (`training.demo.pretrain_place_reader`). Number words, not the digit
    tokens: a Set-of-Mark label is a digit token drawn on the same cell, and the question looks it up by its token."""
    cells = 16

    def decimals(index: int) -> list[int]:
        edge = max(0.0, (index + 0.5) / cells - DEMO_HALF_SIDE)
        return [SMOLLM2_NUMBER_WORD_IDS[int(digit)] for digit in f"{edge:.2f}"[2:]]

    return {"hidden_size": 64, "column_token_ids": [decimals(index) for index in range(cells)],
            "row_token_ids": [decimals(index) for index in range(cells)]}


# SmolLM2-135M-Instruct: Llama layout, tied input and output embeddings.
SMOLLM2_135M = dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152, theta=1e5,
                    max_positions=8192)


PRESETS = {
    # The SPHINX-X family: one-stage models with skip tokens.
    "sphinx-x-tiny": lambda: {"text_config": llama(**TINYLLAMA), **light_encoders(), **SPHINX_X_CANVAS},
    "sphinx-x-internlm2-7b": lambda: {"text_config": llama(**INTERNLM2_7B), **light_encoders(), **SPHINX_X_CANVAS},
    "sphinx-x-llama2-13b": lambda: {"text_config": llama(**LLAMA2_13B), **light_encoders(), **SPHINX_X_CANVAS},
    "sphinx-x-moe": lambda: {"text_config": mixtral(), **light_encoders(), **SPHINX_X_CANVAS},
    # Released LLaMA2-Accessory checkpoints (spec section 1): reference geometry, no skip tokens.
    "sphinx-tiny": lambda: {
        "text_config": llama(**TINYLLAMA),
        **light_encoders(),
        "tile_size": 512,
        "image_grid": [1, 1],
        "use_skip_tokens": False,
    },
    "sphinx-tiny-1k": lambda: {
        "text_config": llama(**TINYLLAMA),
        **light_encoders(),
        "tile_size": 512,
        "image_grid": [2, 2],
        "use_skip_tokens": False,
    },
    "sphinx": lambda: {
        "text_config": llama(**LLAMA2_13B),
        **four_encoders(256),
        "tile_size": 224,
        "image_grid": [1, 1],
        "use_skip_tokens": False,
        "view_source": "base_views",
    },
    "sphinx-1k": lambda: {
        "text_config": llama(**LLAMA2_13B),
        **four_encoders(256),
        "tile_size": 224,
        "image_grid": [2, 2],
        "use_skip_tokens": False,
        "view_source": "base_views",
    },
    "sphinx-moe": lambda: {
        "text_config": mixtral(),
        **four_encoders(512),
        "tile_size": 512,
        "image_grid": [1, 1],
        "use_skip_tokens": False,
    },
    "sphinx-moe-1k": lambda: {
        "text_config": mixtral(),
        **four_encoders(512),
        "tile_size": 512,
        "image_grid": [2, 2],
        "use_skip_tokens": False,
    },
    # The embedded demo model (`sphinx-x chat` without --model): SmolLM2-135M-Instruct with a pretrained DINOv2-S and
    # a small ConvNeXt, on a 224-px canvas of 2x2 tiles (see `sphinx_x.demo`).
    "sphinx-x-demo": lambda: {
        "text_config": llama(**SMOLLM2_135M, tie=True),
        **demo_encoders(),
        "char_reader_config": demo_char_reader(),
        "tile_size": 112,
        "image_grid": [2, 2],
        "use_skip_tokens": True,
        "tie_word_embeddings": True,
        "reader_words": demo_reader_words(),
    },
    # Tiny random models for tests and benchmarks: real geometry and token counts, small widths.
    "tiny-random": lambda: {"text_config": llama(64, 128, 2, 4, 2, vocab=512), **tiny_encoders(), **SPHINX_X_CANVAS},
    "tiny-random-moe": lambda: {
        "text_config": mixtral(64, 96, 2, 4, 2, experts=4, vocab=512),
        **tiny_encoders(),
        **SPHINX_X_CANVAS,
    },
}
PRESETS["sphinx-v2-1k"] = PRESETS["sphinx-1k"]
# The demo with a place reader for grounding (`demo_place_words`): in training, not yet the shipped demo.
PRESETS["sphinx-x-demo-places"] = lambda: {**PRESETS["sphinx-x-demo"](), "place_words": demo_place_words()}


def preset_config(name: str, **overrides) -> SphinxXConfig:
    """A `SphinxXConfig` from a preset name; keyword arguments override its fields."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}.")
    return SphinxXConfig(**{**PRESETS[name](), **overrides})
