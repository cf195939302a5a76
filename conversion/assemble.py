"""Assemble an untrained SPHINX-X from public checkpoints of its parts, ready for one-stage training.

The parts come in the formats their authors publish:

* the LLM: an HF folder (`config.json`, safetensors or `.bin` weights, tokenizer) of TinyLlama / LLaMA-2 / SmolLM2
  (`llama`) or Mixtral (`mixtral`), InternLM2 in its own format (`model_type: internlm2`, remote code), converted to
  Llama, or a GGUF file (or a folder holding one), dequantised by transformers; SentencePiece or BPE tokenizers, tied
  or separate output embeddings;
* ConvNeXt-XXLarge: the LAION-2B CLIP model as open_clip publishes it (`open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin` holding the whole CLIP; only `visual.trunk.*` is kept), or the timm trunk
  (`model.safetensors` with `stem.*`, `stages.*`, `head.norm.*` at top level);
* DINOv2: an HF `Dinov2Model` folder of any size (`facebook/dinov2-giant`, or ViT-S/14 for the demo);
* presets whose ConvNeXt is trained from scratch (`sphinx-x-demo`) take none: it is initialised at the preset's size.

The preset gives the LLM family, the canvas and the encoder view sizes; every size comes from the parts. The
projector, the image tags and the skip embedding are new (initialised as the model initialises them) and skip tokens
are on. The folder is written atomically, with the processor, chat template, generation config and remote code.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Dinov2Config,
    Dinov2Model,
    GgufConfig,
    PreTrainedConfig,
)

from sphinx_x import SphinxXForConditionalGeneration, SphinxXImageProcessor, SphinxXProcessor
from sphinx_x.presets import preset_config
from sphinx_x.processors.processing_sphinx_x import CHATML_TEMPLATE

from .accessory import convert_convnext, dinov2_position_table, generation_config, reference_tokenizer
from .accessory_encoders import convnext_config
from .common import ConversionError, read_json, write_model_folder
from .internlm2 import internlm2_to_llama


# The format of the LLM folder each SPHINX-X preset is assembled from (the preset's text config gives the family the
# weights end up in: InternLM2 becomes Llama).
LLM_FORMATS = {
    "sphinx-x-tiny": "llama",
    "sphinx-x-internlm2-7b": "internlm2",
    "sphinx-x-llama2-13b": "llama",
    "sphinx-x-moe": "mixtral",
    "sphinx-x-demo": "llama",
    "sphinx-x-demo-places": "llama",
}
# Presets whose ConvNeXt expert is new (a small reader trained with the rest), not a published checkpoint.
FRESH_CONVNEXT = {"sphinx-x-demo", "sphinx-x-demo-places"}
CONVNEXT_PREFIX = "model.convnext."
# A preset's character and place readers are always new (the demo's).
NEW_READER_PREFIXES = ("model.char_reader.", "model.place_reader.")
# Parameters no part provides: initialised by the model, trained by one-stage training.
NEW_PARAMETERS = {
    "model.visual_projector.linear.weight",
    "model.visual_projector.linear.bias",
    "model.visual_projector.norm.weight",
    "model.visual_projector.norm.bias",
    "model.image_tags.start",
    "model.image_tags.end",
    "model.image_tags.skip",
}
GGUF_SUFFIX = ".gguf"
# Weight files of an HF folder, in order of preference: (sharded index, single file).
HF_WEIGHTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
# ConvNeXt checkpoint names, in order of preference: open_clip's whole CLIP, then timm's trunk.
CONVNEXT_CHECKPOINTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
OPEN_CLIP_TRUNK = "visual.trunk."
# The timm trunk SPHINX uses: stem, stages and the head's LayerNorm (`head.fc`, the CLIP projection, is not used).
TRUNK_PARTS = ("stem.", "stages.", "head.norm.")


# Which part a model key comes from, for error messages.
PART_OF_KEY = {"language_model": "LLM", "lm_head": "LLM", "convnext": "ConvNeXt", "dinov2": "DINOv2"}


def weight_files(folder: Path, what: str) -> list[Path]:
    """The weight files of an HF-format folder: safetensors (single or sharded) when present, else PyTorch `.bin`."""
    for index_name, single_name in HF_WEIGHTS:
        if (folder / index_name).is_file():
            weight_map = read_json(folder / index_name, f"the {what} folder needs one.").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{folder / index_name} has no weight_map.")
            shards = sorted({folder / name for name in weight_map.values()})
            missing = [shard.name for shard in shards if not shard.is_file()]
            if missing:
                raise ConversionError(f"{folder / index_name} lists shards that are missing: {missing[:4]}.")
            return shards
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise ConversionError(
        f"No {what} weights in {folder}: expected model.safetensors, pytorch_model.bin or a sharded index of either."
    )


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch checkpoint, memory-mapped (tensors are read when used) and unpickled safely."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises several types for truncated zips and refused pickles
        raise ConversionError(f"Cannot read {path}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{path} does not hold a state dict.")
    return state


def read_tensors(path: Path, wanted: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors of one checkpoint file whose names pass `wanted`; safetensors are read tensor by tensor."""
    if path.suffix != ".safetensors":
        return {key: tensor for key, tensor in load_bin(path).items() if wanted(key)}
    try:
        with safe_open(path, framework="pt") as file:
            return {key: file.get_tensor(key) for key in file.keys() if wanted(key)}
    except (SafetensorError, OSError) as error:
        raise ConversionError(f"Cannot read {path}: {error}") from None


def gguf_file(path: Path) -> Path | None:
    """The GGUF file an LLM path names: the path itself, or the only `.gguf` of a folder without `config.json`."""
    if path.is_file():
        if path.suffix != GGUF_SUFFIX:
            raise ConversionError(f"The LLM path {path} is a file but not a .gguf file; give the HF model folder.")
        return path
    if (path / "config.json").is_file():
        return None
    found = sorted(path.glob(f"*{GGUF_SUFFIX}"))
    if len(found) > 1:
        raise ConversionError(f"{path} holds several GGUF files ({', '.join(f.name for f in found)}); name one.")
    return found[0] if found else None


def llm_config_json(folder: Path, preset: str) -> dict:
    """The LLM's `config.json` (for a GGUF file, the config transformers reads from it), checked against the format
    the preset is assembled from."""
    gguf = gguf_file(folder)
    if gguf is not None:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_dict()
    else:
        config = read_json(folder / "config.json", "the LLM folder needs one.")
    found, expected = config.get("model_type"), LLM_FORMATS[preset]
    if found != expected:
        fitting = [name for name, model_type in LLM_FORMATS.items() if model_type == found]
        hint = f"; for this LLM use --preset {' or '.join(fitting)}" if fitting else ""
        raise ConversionError(
            f"--preset {preset} is assembled from a {expected} LLM, but {folder} holds model_type {found!r}{hint}."
        )
    return config


def load_llm(folder: Path, config_json: dict) -> tuple[PreTrainedConfig, dict[str, torch.Tensor]]:
    """The LLM's text config and weights under SPHINX-X names (`model.language_model.*`, `lm_head.weight`).

    Weights keep the layout of the files (transformers converts e.g. Mixtral's per-expert tensors when loading).
    """
    gguf = gguf_file(folder)
    if gguf is not None:
        text_config, state = load_gguf_llm(gguf)
    else:
        state = {}
        for path in weight_files(folder, "LLM"):
            # Older checkpoints saved RoPE's `inv_freq` buffers; transformers recomputes them from the config.
            state.update(read_tensors(path, lambda key: not key.endswith("rotary_emb.inv_freq")))
        if config_json["model_type"] == "internlm2":
            state, text_config = internlm2_to_llama(state, config_json)
        else:
            text_config = AutoConfig.from_pretrained(folder)
    if getattr(text_config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the output layer is the token embedding

    weights, unknown = {}, []
    for key, tensor in state.items():
        if key == "lm_head.weight":
            weights[key] = tensor
        elif key.startswith("model."):
            weights["model.language_model." + key.removeprefix("model.")] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"Unexpected tensors in the LLM checkpoint {folder}: {sorted(unknown)[:8]}")
    embeddings = weights.get("model.language_model.embed_tokens.weight")
    if embeddings is None or embeddings.shape[0] != text_config.vocab_size:
        rows = None if embeddings is None else embeddings.shape[0]
        raise ConversionError(
            f"{folder}: config.json says vocab_size {text_config.vocab_size} but the token embedding has {rows} rows."
        )
    return text_config, weights


def load_gguf_llm(path: Path) -> tuple[PreTrainedConfig, dict[str, torch.Tensor]]:
    """The text config and float32 weights (transformers names) of a GGUF causal LM, dequantised by transformers."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
    except ImportError as error:
        raise ConversionError(f'Reading GGUF needs the "gguf" package ({error}): pip install gguf') from None
    except (OSError, ValueError, KeyError) as error:
        raise ConversionError(f"Cannot read the GGUF LLM {path}: {error}") from None
    config = model.config
    config.name_or_path = ""
    return config, dict(model.state_dict())


def load_tokenizer(folder: Path, vocab_size: int):
    """The LLM's tokenizer with the `<image>` placeholder appended.

    A SentencePiece `tokenizer.model` is read as the reference reads it: `LlamaTokenizer` (whatever tokenizer class
    the folder names, which is how InternLM2's own tokenizer is loaded without its remote code). A BPE tokenizer
    (`tokenizer.json`, or the one inside a GGUF file) loads with `AutoTokenizer` and pads with its own pad token, or
    EOS. The placeholder gets the next id: the text vocabulary size, or one of the spare rows of a padded embedding
    table.
    """
    gguf = gguf_file(folder)
    candidates = [folder / name for name in ("tokenizer.model", "tokenizer.json") if (folder / name).is_file()]
    source = gguf or next(iter(candidates), None)
    if source is None:
        raise ConversionError(f"{folder} has no tokenizer.model or tokenizer.json.")
    try:
        if gguf is not None:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        elif source.name == "tokenizer.model":
            tokenizer = reference_tokenizer(folder)
        else:
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 (sentencepiece, tokenizers and json each raise their own kind)
        raise ConversionError(
            f"{source} is not a readable tokenizer ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "copy the LLM's original tokenizer files into the folder again."
        ) from None
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    text_tokens = len(tokenizer) - 1  # without the placeholder
    if text_tokens > vocab_size:
        raise ConversionError(
            f"The tokenizer in {folder} has {text_tokens} tokens but the LLM embeds only {vocab_size}: "
            "ids past the embedding table would fail."
        )
    return tokenizer


def convnext_checkpoint(path: Path) -> Path:
    """The ConvNeXt checkpoint file: `path` itself, or the first published file name found in the folder `path`."""
    if path.is_file():
        return path
    for name in CONVNEXT_CHECKPOINTS:
        if (path / name).is_file():
            return path / name
    raise ConversionError(f"No ConvNeXt checkpoint in {path}: expected one of {', '.join(CONVNEXT_CHECKPOINTS)}.")


def is_trunk_key(key: str) -> bool:
    return key.removeprefix(OPEN_CLIP_TRUNK).startswith(TRUNK_PARTS)


def load_convnext_trunk(path: Path) -> dict[str, torch.Tensor]:
    """The timm ConvNeXt trunk (`stem.*`, `stages.*`, `head.norm.*`) of an open_clip CLIP or a timm checkpoint."""
    path = convnext_checkpoint(path)
    trunk = {key.removeprefix(OPEN_CLIP_TRUNK): tensor for key, tensor in read_tensors(path, is_trunk_key).items()}
    if "stem.0.weight" not in trunk:
        raise ConversionError(
            f"{path} holds no ConvNeXt trunk: expected open_clip `visual.trunk.*` keys or timm `stem.*` / `stages.*` "
            "keys at top level."
        )
    return trunk


def load_dinov2(folder: Path, view_size: int) -> tuple[Dinov2Config, dict[str, torch.Tensor]]:
    """DINOv2's config and weights (`Dinov2Model` names) for `view_size`-px views.

    The positional table is resampled from its native grid (37x37 for 518 px) to the view's grid the way the
    reference does (`dinov2_position_table`), so transformers uses it as it is instead of interpolating its own way.
    """
    model_type = read_json(folder / "config.json", "the DINOv2 folder needs one.").get("model_type")
    if model_type != "dinov2":
        raise ConversionError(f"{folder} holds model_type {model_type!r}, not an HF Dinov2Model (dinov2).")
    weight_files(folder, "DINOv2")
    try:
        model, info = Dinov2Model.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    except SafetensorError as error:
        raise ConversionError(f"Cannot read the DINOv2 weights in {folder}: {error}") from None
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])[:8]
        raise ConversionError(f"The DINOv2 checkpoint in {folder} lacks tensors for: {missing}")
    config = model.config
    state = model.state_dict()
    state["embeddings.position_embeddings"] = dinov2_position_table(
        state["embeddings.position_embeddings"], view_size // config.patch_size
    )
    config.image_size = view_size
    return config, state


def assemble(
    preset: str,
    llm: str | Path,
    convnext: str | Path | None,
    dinov2: str | Path,
    dst: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    overwrite: bool = False,
    verify: bool = False,
) -> Path:
    """Build an untrained SPHINX-X from its parts and write it, with its processor, as a transformers folder.

    Args:
        preset: one of `LLM_FORMATS` (`sphinx-x-tiny`, `sphinx-x-internlm2-7b`, `sphinx-x-llama2-13b`, `sphinx-x-moe`,
            `sphinx-x-demo`): the LLM family, canvas, encoder view sizes and skip tokens.
        llm: folder of the LLM (HF Llama / Mixtral, or InternLM2 in its own format), tokenizer included, or a GGUF
            file or a folder holding one.
        convnext: open_clip CLIP ConvNeXt folder or file, or a timm ConvNeXt trunk checkpoint; `None` for the
            presets of `FRESH_CONVNEXT`, whose ConvNeXt is initialised at the preset's size.
        dinov2: HF Dinov2Model folder.
        dst: output folder, written atomically; an existing one is replaced only with `overwrite`.
        dtype: dtype of the written weights.
        verify: reload the result and run a forward pass and a short generation before renaming it into place.

    Returns:
        `dst`.
    """
    if preset not in LLM_FORMATS:
        raise ConversionError(f"Unknown SPHINX-X preset {preset!r}; choose one of: {', '.join(LLM_FORMATS)}.")
    llm, dinov2, dst = Path(llm), Path(dinov2), Path(dst)
    if not dinov2.is_dir():
        raise ConversionError(f"The DINOv2 path {dinov2} is not a folder.")
    if not (llm.is_dir() or llm.suffix == GGUF_SUFFIX and llm.is_file()):
        raise ConversionError(f"The LLM path {llm} is neither a folder nor a .gguf file.")
    if (convnext is None) != (preset in FRESH_CONVNEXT):
        need = "takes no --convnext: its ConvNeXt is new" if preset in FRESH_CONVNEXT else "needs --convnext"
        raise ConversionError(f"--preset {preset} {need}.")
    if convnext is not None and not Path(convnext).exists():
        raise ConversionError(f"The ConvNeXt path {convnext} does not exist.")
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst} already exists; pass --overwrite to replace it.")

    template = preset_config(preset)
    # The cheap checks first: LLM family and tokenizer, then the encoders, then the (largest) LLM weights.
    llm_json = llm_config_json(llm, preset)
    vocab_size = llm_json.get("vocab_size")
    if not isinstance(vocab_size, int):
        raise ConversionError(f"{llm / 'config.json'} has no vocab_size.")
    tokenizer = load_tokenizer(llm, vocab_size)
    if convnext is None:
        trunk, trunk_config = {}, template.convnext_config
    else:
        trunk = load_convnext_trunk(Path(convnext))
        shapes = {key: tensor.shape for key, tensor in trunk.items()}
        trunk_config = convnext_config(shapes, template.convnext_config.image_size, prefix="")
    dinov2_config, dinov2_state = load_dinov2(dinov2, template.dinov2_config.image_size)
    text_config, weights = load_llm(llm, llm_json)

    # The reference pads with the tokenizer's pad id (0); the embedding's `padding_idx` follows `pad_token_id`.
    text_config.pad_token_id = tokenizer.pad_token_id
    for part_config in (text_config, dinov2_config):
        part_config.name_or_path = ""  # local source paths do not belong in a published config
    config = preset_config(
        preset,
        text_config=text_config,
        convnext_config=trunk_config,
        dinov2_config=dinov2_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )
    if trunk:
        weights.update(convert_convnext(trunk, prefix=""))
    weights.update({f"model.dinov2.model.{key}": tensor for key, tensor in dinov2_state.items()})
    try:
        # transformers places the tensors (converting file layouts to its own) and initialises the new parameters; its
        # load report lists those as MISSING, as expected.
        model, info = SphinxXForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=weights, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except RuntimeError as error:
        raise ConversionError(f"The parts do not fit together: {error}") from None
    if info["mismatched_keys"]:  # a part's config.json disagrees with its own tensors
        key, stored, expected = sorted(info["mismatched_keys"])[0]
        part = next((name for prefix, name in PART_OF_KEY.items() if prefix in key), "a part")
        raise ConversionError(
            f"The {part} does not fit its config.json: {key} is {list(stored)} in the weights but the config asks for "
            f"{list(expected)} ({len(info['mismatched_keys'])} mismatched tensor(s)). Use the config.json that came "
            "with those weights."
        )
    fresh = NEW_PARAMETERS | {key for key in info["missing_keys"] if (not trunk and key.startswith(CONVNEXT_PREFIX))
                              or key.startswith(NEW_READER_PREFIXES)}
    missing = set(info["missing_keys"]) - fresh
    if missing or info["unexpected_keys"]:
        raise ConversionError(
            f"The parts do not fill the model: missing {sorted(missing)[:8]}, unexpected "
            f"{sorted(info['unexpected_keys'])[:8]}."
        )

    image_processor = SphinxXImageProcessor.from_model_config(config)
    chatml = "<|im_start|>" in (tokenizer.chat_template or "")
    processor = SphinxXProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHATML_TEMPLATE if chatml else None
    )
    model.generation_config = generation_config(tokenizer, stop_at_terminator=not chatml)
    return write_model_folder(model, processor, dst, overwrite=overwrite, verify=verify)


__all__ = ["assemble", "load_convnext_trunk", "load_dinov2", "load_llm", "load_tokenizer"]
