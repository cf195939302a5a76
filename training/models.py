"""The model and processor a recipe trains: loading, from-scratch presets, the freeze policy, attention, QLoRA."""

import importlib.util
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, BitsAndBytesConfig

from ..conversion.accessory import build_tokenizer, generation_config
from ..presets import preset_config
from ..processors import SphinxXImageProcessor, SphinxXProcessor
from .recipe import VISION_ENCODERS, RecipeError


# Module names relative to `SphinxXForConditionalGeneration`, as peft matches them (`re.fullmatch`).
VISION_ENCODER_MODULES = r"model\.(clip|convnext|dinov2|qformer|char_reader|place_reader)\..*"
# Attention and MLP projections of the LLM's decoder layers (Mixtral: attention only; its experts are 3D parameters,
# adapted with `peft.target_parameters`, and its router `mlp.gate` is left alone).
LLM_LINEAR_LAYERS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def attention_implementation(requested: str = "auto") -> dict:
    """The LLM's attention (the encoders keep their own default: ConvNeXt has no attention, DINOv2 / CLIP use SDPA).

    `auto`: FlashAttention-2 when `flash_attn` is installed and CUDA is there, else SDPA.
    """
    if requested == "auto":
        flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
        requested = "flash_attention_2" if flash else "sdpa"
    return {"text_config": requested}


def quantization_config(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA: the LLM in 4-bit NF4; the visual encoders, projectors and LM head stay in `compute_dtype`."""
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError(
            "QLoRA loads the LLM in 4-bit with bitsandbytes, which needs a CUDA GPU and `pip install bitsandbytes`. "
            "Use `peft.method: lora` here."
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=[*VISION_ENCODERS, "visual_projector", "qformer_projector", "lm_head"],
    )


def load_tokenizer(source: str):
    """A tokenizer with the `<image>` placeholder and a pad token. A folder holding only LLaMA2-Accessory's
    `tokenizer.model` is read as the converter reads it (reference-exact SentencePiece ids)."""
    folder = Path(source)
    if (folder / "tokenizer.model").is_file() and not (folder / "tokenizer_config.json").is_file():
        return build_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def processor_for(config, tokenizer) -> SphinxXProcessor:
    """The processor whose canvas, tiles and token counts match `config`."""
    image_processor = SphinxXImageProcessor.from_model_config(config)
    return SphinxXProcessor(image_processor=image_processor, tokenizer=tokenizer)


def from_preset(spec: dict, dtype, attn_implementation):
    """A randomly initialised model of a preset, with a processor around `spec["tokenizer"]`."""
    tokenizer = load_tokenizer(spec["tokenizer"])
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = preset_config(spec["preset"], **{"image_token_id": image_token_id, **spec.get("config_overrides", {})})
    vocab_size = config.text_config.vocab_size
    largest_id = max(index for index in tokenizer.get_vocab().values() if index != image_token_id)
    if largest_id >= vocab_size:
        raise RecipeError(
            f"The tokenizer has ids up to {largest_id} but the preset's LLM has {vocab_size} embeddings; pick a "
            "matching tokenizer or set model.config_overrides.text_config."
        )
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.generation_config = generation_config(tokenizer)
    # As the converters do: the saved folder also loads as a bare `AutoModel` with remote code.
    model.config.auto_map = {"AutoModel": "modeling_sphinx_x.SphinxXModel"}
    return model, processor_for(config, tokenizer)


def load_model_and_processor(spec: dict, peft_method: str | None = None):
    """The model of a recipe's `model` section and its processor.

    Args:
        spec: `path` (folder or Hub id) or `preset` + `tokenizer` (+ `config_overrides`); `dtype`;
            `attn_implementation`.
        peft_method: `"qlora"` loads the LLM in 4-bit, each process on its own GPU.
    """
    dtype = DTYPES[spec.get("dtype", "float32")]
    attn_implementation = attention_implementation(spec.get("attn_implementation", "auto"))
    if "preset" in spec:
        model, processor = from_preset(spec, dtype, attn_implementation)
    else:
        kwargs = {}
        if peft_method == "qlora":
            compute_dtype = torch.bfloat16 if dtype in ("auto", torch.float32) else dtype
            kwargs = {
                "quantization_config": quantization_config(compute_dtype),
                "device_map": {"": PartialState().local_process_index},
            }
        model = AutoModelForImageTextToText.from_pretrained(
            spec["path"], dtype=dtype, attn_implementation=attn_implementation, **kwargs
        )
        processor = AutoProcessor.from_pretrained(spec["path"])
    return model, processor


def vision_encoders(model) -> list[torch.nn.Module]:
    """The visual experts a SPHINX-X model has (ConvNeXt, DINOv2, and CLIP / Q-Former for SPHINX v1)."""
    return [encoder for name in VISION_ENCODERS if (encoder := getattr(model.model, name)) is not None]


def freeze_vision_encoders(model) -> None:
    """SPHINX-X trains in one stage: projector, image tags, skip token and LLM together; the encoders stay fixed."""
    for encoder in vision_encoders(model):
        encoder.requires_grad_(False)


__all__ = [
    "LLM_LINEAR_LAYERS",
    "VISION_ENCODER_MODULES",
    "attention_implementation",
    "freeze_vision_encoders",
    "load_model_and_processor",
    "load_tokenizer",
    "processor_for",
    "quantization_config",
    "vision_encoders",
]
