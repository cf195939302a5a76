"""LLaMA2-Accessory SPHINX checkpoints -> SPHINX-X in transformers format, converted tensor by tensor.

A source folder holds `consolidated.NN-of-MM.model.pth` shards (`{"model": state_dict}`, keys prefixed `llma.`),
`config.json` (ModelArgs), `meta.json` (`{"llama_type": ...}`) and `tokenizer.model` (SentencePiece). Every released
layout converts (spec 1.1): `llama_ens_light` / `llama_ens5_light` (SPHINX-Tiny, -Tiny-1k: TinyLlama + ConvNeXt +
DINOv2), `llama_ens` / `llama_ens5` (SPHINX, SPHINX-1k, SPHINX-v2-1k: LLaMA2-13B + CLIP + ConvNeXt + DINOv2 + BLIP-2
Q-Former) and `mixtral_sparse_ens` / `mixtral_sparse_ens5` (SPHINX-MoE, -MoE-1k: Mixtral + the same four encoders).

Memory stays near one input shard whatever the model size: the shards are memory-mapped, every output tensor is
merged, converted and written on its own (`shards.AccessoryShards`, `shards_writer`), and the model itself is only
built on the meta device, to check every key and shape before any data is read.
"""

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig, LlamaTokenizer, PreTrainedConfig
from transformers.dynamic_module_utils import custom_object_save

from sphinx_x import SphinxXConfig, SphinxXForConditionalGeneration, SphinxXImageProcessor, SphinxXProcessor
from sphinx_x.presets import PRESETS, llama, mixtral
from sphinx_x.processors.processing_sphinx_x import STOP_STRING

from .accessory_encoders import (
    Rule,
    clip_config,
    clip_rules,
    convert_convnext,
    convnext_config,
    convnext_rules,
    count_indexed,
    dinov2_config,
    dinov2_position_table,
    dinov2_rules,
    qformer_config,
    qformer_rules,
    rename_all,
    renamed,
)
from .common import ConversionError, atomic_output_folder, read_json
from .shards import AccessoryShards
from .shards_writer import write_sharded_safetensors


# llama_type (meta.json) -> the preset with its reference geometry: tile size, grid, view source, encoder view sizes.
RELEASED_LAYOUTS = {
    "llama_ens_light": "sphinx-tiny",
    "llama_ens5_light": "sphinx-tiny-1k",
    "llama_ens": "sphinx",
    "llama_ens5": "sphinx-1k",
    "mixtral_sparse_ens": "sphinx-moe",
    "mixtral_sparse_ens5": "sphinx-moe-1k",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CLIP_ACTIVATIONS = ("gelu", "quick_gelu")

# Stored in the checkpoints but unused by the reference forward pass (spec 3.1, 5.4): CLIP's text-side leftovers and
# its output projection, the BLIP-2 Q-Former's text branch.
UNUSED_KEYS = re.compile(
    r"^clip\.(?!visual\.)|^clip\.visual\.proj$|^qformer\.qformer\.encoder\.layer\.\d+\.(intermediate|output)\."
)

__all__ = [
    "ConversionError",
    "build_tokenizer",
    "convert_accessory",
    "convert_convnext",
    "dinov2_position_table",
    "generation_config",
    "stop_token_sequences",
]


# ----------------------------------------------------------------------------------------------------------------------
# The language model


def permute_for_rotate_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved (Meta, complex-pair) RoPE rows -> rotate-half rows, per head (spec 7.2). `[n_heads * hd, in]`."""
    out_features, in_features = weight.shape
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, in_features).transpose(1, 2).reshape(out_features, in_features)


def experts_gate_up(w1: torch.Tensor, w3: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Accessory `w1`, `w3` `[E * F, dim]` (expert-major rows, used as `x @ W_e.T`) -> transformers' fused
    `gate_up_proj` `[E, 2F, dim]`: per expert the gate rows, then the up rows."""
    return torch.cat([w1.unflatten(0, (num_experts, -1)), w3.unflatten(0, (num_experts, -1))], dim=1)


def experts_down(w2: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Accessory `w2` `[E * F, dim]`, used as `h @ W2_e` (transposed storage) -> `down_proj` `[E, dim, F]`."""
    return w2.unflatten(0, (num_experts, -1)).transpose(1, 2)


def rope_parameters(args: dict) -> dict:
    theta = float(args.get("rope_theta") or 10000.0)
    if args.get("rope_scaling") is None:
        return {"rope_type": "default", "rope_theta": theta}
    # Accessory multiplies positions by `rope_scaling`; HF's linear scaling divides them by `factor` (spec 7.1).
    return {"rope_type": "linear", "rope_theta": theta, "factor": 1.0 / float(args["rope_scaling"])}


def text_config(args: dict, shapes: Mapping, *, moe: bool) -> PreTrainedConfig:
    """Llama or Mixtral config: sizes read from the tensors and checked against config.json, whose RoPE and norm
    settings are used as they are."""
    for field in ("dim", "n_layers", "n_heads"):
        if field not in args:
            raise ConversionError(f"config.json has no {field!r}; use the config.json that came with the shards.")
    for field in ("dim", "n_layers", "n_heads", "n_kv_heads"):
        value = args.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConversionError(
                f"config.json has {field}={value!r}, not a positive whole number; use the config.json that came with "
                "the shards."
            )

    def disagree(field, value, evidence):
        return ConversionError(
            f"config.json says {field}={value} but {evidence}: config.json and the shards come from different "
            "checkpoints. Use the config.json that came with the shards."
        )

    vocab_size, dim = shapes["tok_embeddings.weight"]
    num_layers = count_indexed(shapes, r"layers\.(\d+)\.")
    n_heads = args["n_heads"]
    n_kv_heads = args.get("n_kv_heads") or n_heads
    if args["dim"] != dim:
        raise disagree("dim", args["dim"], f"llma.tok_embeddings.weight is {dim} wide")
    if args["n_layers"] != num_layers:
        raise disagree("n_layers", args["n_layers"], f"the shards hold {num_layers} layers")
    if dim % n_heads or (dim // n_heads) % 2:
        raise disagree("n_heads", n_heads, f"dim {dim} does not split into heads of an even size")
    head_dim = dim // n_heads
    if shapes["layers.0.attention.wk.weight"][0] != n_kv_heads * head_dim:
        rows = shapes["layers.0.attention.wk.weight"][0]
        raise disagree("n_kv_heads", args.get("n_kv_heads"), f"wk has {rows} rows, not {n_kv_heads} x {head_dim}")

    if moe:
        num_experts = shapes["layers.0.feed_forward.gate.weight"][0]
        ffn_size = shapes["layers.0.feed_forward.w1"][0] // num_experts
        moe_args = args.get("moe") or {}
        if moe_args.get("num_experts", num_experts) != num_experts:
            raise disagree("moe.num_experts", moe_args["num_experts"], f"the router has {num_experts} outputs")
        if args.get("hidden_dim", ffn_size) != ffn_size:
            raise disagree("hidden_dim", args["hidden_dim"], f"each expert's w1 has {ffn_size} rows")
        config = mixtral(dim, ffn_size, num_layers, n_heads, n_kv_heads, experts=num_experts, vocab=vocab_size)
        config.num_experts_per_tok = moe_args.get("num_experts_per_tok", 2)
    else:
        ffn_size = shapes["layers.0.feed_forward.w1.weight"][0]
        # The reference runs with a 4096-token window, image tokens included, whatever config.json says.
        max_positions = max(4096, args.get("max_seq_len") or 0)
        config = llama(dim, ffn_size, num_layers, n_heads, n_kv_heads, vocab=vocab_size, max_positions=max_positions)
    config.rms_norm_eps = args.get("norm_eps", 1e-5)
    config.rope_parameters = rope_parameters(args)
    return config


def rotary_rows(source: str, target: str, n_heads: int) -> Rule:
    """`renamed`, with the rows of each head reordered from interleaved to rotate-half RoPE (wq, wk)."""
    return Rule((source,), lambda weight: {target: permute_for_rotate_half(weight, n_heads)})


def llm_rules(config: PreTrainedConfig) -> list[Rule]:
    """Accessory LLaMA / sparse-Mixtral keys (spec 5.1, 5.2) -> `model.language_model.*`, `lm_head` (spec 7.1, 7.3)."""
    lm = "model.language_model."
    rules = [renamed("tok_embeddings.weight", f"{lm}embed_tokens.weight")]
    for layer in range(config.num_hidden_layers):
        src, dst = f"layers.{layer}.", f"{lm}layers.{layer}."
        rules += [
            rotary_rows(f"{src}attention.wq.weight", f"{dst}self_attn.q_proj.weight", config.num_attention_heads),
            rotary_rows(f"{src}attention.wk.weight", f"{dst}self_attn.k_proj.weight", config.num_key_value_heads),
            renamed(f"{src}attention.wv.weight", f"{dst}self_attn.v_proj.weight"),
            renamed(f"{src}attention.wo.weight", f"{dst}self_attn.o_proj.weight"),
            renamed(f"{src}attention_norm.weight", f"{dst}input_layernorm.weight"),
            renamed(f"{src}ffn_norm.weight", f"{dst}post_attention_layernorm.weight"),
        ]
        if config.model_type == "mixtral":
            experts = config.num_local_experts
            gate_up, down = f"{dst}mlp.experts.gate_up_proj", f"{dst}mlp.experts.down_proj"
            rules += [
                renamed(f"{src}feed_forward.gate.weight", f"{dst}mlp.gate.weight"),
                Rule(
                    (f"{src}feed_forward.w1", f"{src}feed_forward.w3"),
                    lambda w1, w3, out=gate_up: {out: experts_gate_up(w1, w3, experts)},
                ),
                Rule((f"{src}feed_forward.w2",), lambda w2, out=down: {out: experts_down(w2, experts)}),
            ]
        else:
            rules += [
                renamed(f"{src}feed_forward.w1.weight", f"{dst}mlp.gate_proj.weight"),
                renamed(f"{src}feed_forward.w3.weight", f"{dst}mlp.up_proj.weight"),
                renamed(f"{src}feed_forward.w2.weight", f"{dst}mlp.down_proj.weight"),
            ]
    rules += [renamed("norm.weight", f"{lm}norm.weight"), renamed("output.weight", "lm_head.weight")]
    return rules


# ----------------------------------------------------------------------------------------------------------------------
# The whole model


def clip_hidden_act(args: dict, clip_activation: str | None) -> str:
    """CLIP's activation: `clip_activation` when given, else the one the reference runs with (spec 3.1 a): it builds
    open_clip's ViT-L-14 with exact GELU unless config.json sets `load_pretrained_visual_encoder`, where open_clip
    loads OpenAI's weights into a QuickGELU model."""
    if clip_activation is None:
        return "quick_gelu" if args.get("load_pretrained_visual_encoder") else "gelu"
    if clip_activation not in CLIP_ACTIVATIONS:
        raise ConversionError(f"clip_activation must be one of {CLIP_ACTIVATIONS}, not {clip_activation!r}.")
    return clip_activation


def sphinx_config(
    llama_type: str,
    args: dict,
    shapes: Mapping,
    *,
    clip_activation: str | None = None,
    clip_num_heads: int | None = None,
    dinov2_num_heads: int | None = None,
    qformer_num_heads: int | None = None,
    qformer_vision_num_heads: int | None = None,
) -> SphinxXConfig:
    """The SphinxXConfig of a checkpoint: reference geometry of its `llama_type`, every size from the tensors
    (`shapes`: merged shapes by key, `args`: its config.json; keyword arguments as in `convert_accessory`)."""
    layout = PRESETS[RELEASED_LAYOUTS[llama_type]]()
    encoders = {}
    try:
        if "clip_config" in layout:
            hidden_act = clip_hidden_act(args, clip_activation)
            encoders["clip_config"] = clip_config(shapes, hidden_act=hidden_act, num_heads=clip_num_heads)
        encoders["convnext_config"] = convnext_config(shapes, layout["convnext_config"].image_size)
        encoders["dinov2_config"] = dinov2_config(
            shapes, view_size=layout["dinov2_config"].image_size, num_heads=dinov2_num_heads
        )
        if "qformer_config" in layout:
            encoders["qformer_config"] = qformer_config(
                shapes, num_heads=qformer_num_heads, vision_num_heads=qformer_vision_num_heads
            )
        llm_config = text_config(args, shapes, moe=layout["text_config"].model_type == "mixtral")
    except KeyError as error:
        raise ConversionError(
            f"The shards have no {error.args[0]!r}, which a {llama_type} checkpoint holds: check that meta.json's "
            "llama_type belongs to these shards."
        ) from None
    try:
        config = SphinxXConfig(
            text_config=llm_config,
            **encoders,
            tile_size=layout["tile_size"],
            image_grid=layout["image_grid"],
            view_source=layout.get("view_source", "canvas"),
            use_skip_tokens=False,
        )
    except ValueError as error:
        raise ConversionError(f"The encoders of this checkpoint do not fit the {llama_type} layout: {error}") from None
    if config.vision_feature_size != shapes["visual_proj.0.weight"][1]:
        raise ConversionError(
            f"visual_proj takes {shapes['visual_proj.0.weight'][1]} features but the encoders give "
            f"{config.vision_feature_size}: the shards are not a {llama_type} checkpoint."
        )
    return config


def conversion_rules(config: SphinxXConfig, keys: list[str]) -> list[Rule]:
    """Every rule of a checkpoint, in the order the weights are written."""
    hidden = config.text_config.hidden_size
    std = config.text_config.initializer_range
    rules = llm_rules(config.text_config) + [
        Rule(("start_img",), lambda tag: {"model.image_tags.start": tag.reshape(-1)}),
        Rule(("end_img",), lambda tag: {"model.image_tags.end": tag.reshape(-1)}),
        # Untrained in released checkpoints (they never skip tiles); seeded, so that conversions are reproducible.
        Rule((), lambda: {
            "model.image_tags.skip": torch.randn(hidden, generator=torch.Generator().manual_seed(0)) * std
        }),
    ]
    projector = [(r"0\.", "linear."), (r"1\.", "norm.")]
    rules += rename_all(keys, "visual_proj.", projector, "model.visual_projector.")
    if config.clip_config is not None:
        rules += clip_rules(keys)
    rules += convnext_rules(keys)
    rules += dinov2_rules(keys, config.encoder_grid_size("dinov2"))
    if config.qformer_config is not None:
        rules += rename_all(keys, "qformer_proj.", projector, "model.qformer_projector.")
        rules += qformer_rules(keys)
    return rules


def plan_weights(rules: list[Rule], shards: AccessoryShards, model_state: dict, dtype: torch.dtype) -> dict:
    """Output key -> meta tensor of its final shape and dtype, from running the rules on meta tensors; checks that
    the rules consume every stored tensor and give exactly the weights of the model, with the model's shapes."""
    consumed = [key for rule in rules for key in rule.sources]
    absent = sorted(set(consumed) - set(shards.keys()))
    if absent:
        raise ConversionError(f"The shards lack {absent[:8]} ({len(absent)} tensors): the checkpoint is incomplete.")
    unexpected = sorted(set(shards.keys()) - set(consumed) - {k for k in shards.keys() if UNUSED_KEYS.search(k)})
    if unexpected:
        raise ConversionError(
            f"The shards hold {len(unexpected)} tensors that no module of this layout uses, e.g. {unexpected[:8]}: "
            "check that meta.json's llama_type belongs to these shards."
        )
    planned = {}
    for rule in rules:
        try:
            outputs = rule.convert(*(shards.meta(source) for source in rule.sources))
        except RuntimeError as error:  # e.g. expert rows that do not split into the router's experts
            raise ConversionError(f"Cannot convert {list(rule.sources)}: {error}") from None
        planned.update({key: torch.empty(t.shape, dtype=dtype, device="meta") for key, t in outputs.items()})
    missing = sorted(model_state.keys() - planned.keys())
    extra = sorted(planned.keys() - model_state.keys())
    wrong = sorted(k for k in planned.keys() & model_state.keys() if planned[k].shape != model_state[k].shape)
    if missing or extra or wrong:
        shapes = [f"{k}: {tuple(planned[k].shape)} for {tuple(model_state[k].shape)}" for k in wrong[:4]]
        raise ConversionError(
            f"The converted weights do not fit the model: missing {missing[:4]}, unexpected {extra[:4]}, "
            f"wrong shapes {shapes}."
        )
    return planned


def converted_tensors(
    rules: list[Rule], shards: AccessoryShards, planned: dict, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Run the rules on the real tensors, one at a time, yielding `(key, tensor)` in the planned order and dtype."""
    total = sum(t.numel() * t.element_size() for t in planned.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="Converting", disable=None) as progress:
        for rule in rules:
            outputs = rule.convert(*(shards.tensor(source) for source in rule.sources))
            for key in list(outputs):
                # Nothing here keeps a reference once the writer is done with it (see `write_safetensors_file`).
                yield key, outputs.pop(key).to(dtype)
                progress.update(planned[key].numel() * planned[key].element_size())
            shards.release_if_over_budget()


def reference_tokenizer(folder: Path) -> LlamaTokenizer:
    """The SentencePiece tokenizer in `folder` (`tokenizer.model` or `tokenizer.json`) as SPHINX uses it, with the
    `<image>` placeholder appended (the next free id) and padding with the unknown token (id 0, as the reference)."""
    # legacy=True keeps SentencePiece's dummy prefix after the image placeholders, so the text after the image block
    # splits exactly as the reference's `[BOS] + sp.encode(prompt)`.
    tokenizer = LlamaTokenizer.from_pretrained(str(folder), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.init_kwargs.update(legacy=True, add_bos_token=True, add_eos_token=False)
    return tokenizer


def build_tokenizer(src: Path) -> LlamaTokenizer:
    if not (Path(src) / "tokenizer.model").is_file():
        raise ConversionError(f"tokenizer.model is missing from {src}.")
    try:
        return reference_tokenizer(src)
    except Exception as error:  # a corrupt file: transformers then tries other formats and names those ("tiktoken")
        raise ConversionError(
            f"{Path(src) / 'tokenizer.model'} is not a readable SentencePiece model ({type(error).__name__}); use the "
            "tokenizer.model that came with the checkpoint."
        ) from None


def stop_token_sequences(tokenizer) -> list[list[int]]:
    """Token sequences of the terminator as a segment and glued to preceding text (reference stop criteria)."""
    as_segment = tokenizer.encode(STOP_STRING, add_special_tokens=False)
    prefix = tokenizer.encode("@", add_special_tokens=False)
    glued = tokenizer.encode("@" + STOP_STRING, add_special_tokens=False)[len(prefix) :]
    return [list(seq) for seq in dict.fromkeys([tuple(as_segment), tuple(glued)]) if seq]


def generation_config(tokenizer, stop_at_terminator: bool = True) -> GenerationConfig:
    """Greedy decoding that stops at EOS, and at the reference terminator `"\\n###"` unless `stop_at_terminator` is
    off (chat formats whose turns end with EOS, as ChatML's `<|im_end|>`)."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=512,
        do_sample=False,
        stop_token_sequences=stop_token_sequences(tokenizer) if stop_at_terminator else None,
    )


def save_config_and_code(model: SphinxXForConditionalGeneration, processor, folder: Path, dtype: torch.dtype) -> None:
    """What `save_pretrained` writes besides the weights, from a model on the meta device: config (with `auto_map`
    for AutoConfig, AutoModel and AutoModelForImageTextToText), remote code, generation config, processor."""
    config = model.config
    config.dtype = str(dtype).removeprefix("torch.")
    config.architectures = [type(model).__name__]
    # `custom_object_save` lists only the class it saves; the base model is listed for AutoModel too.
    config.auto_map = {"AutoModel": "modeling_sphinx_x.SphinxXModel"}
    custom_object_save(model, folder, config=config)
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    processor.save_pretrained(folder)


def verify_model_folder(folder: Path, dtype: torch.dtype) -> None:
    """Reload a converted folder, run a forward pass and a short greedy generation on a synthetic image."""
    try:
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).eval()
        processor = AutoProcessor.from_pretrained(folder)
        # A wide colour gradient: the canvas gets padding and every tile different content.
        ramp = np.linspace(0, 255, 640, dtype=np.float32)
        pixels = np.stack([np.tile(ramp, (320, 1)), np.tile(ramp[::-1], (320, 1)), np.full((320, 640), 96.0)], axis=-1)
        image = PIL.Image.fromarray(pixels.astype(np.uint8))
        content = [{"type": "image", "image": image}, {"type": "text", "text": "Describe the image."}]
        messages = [{"role": "user", "content": content}]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.inference_mode():
            logits = model(**inputs).logits
            if not torch.isfinite(logits).all():
                raise ConversionError(
                    f"Verification failed: the converted model gives non-finite logits in {dtype}. Convert to "
                    "float32, or check the source weights."
                )
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
    except ConversionError:
        raise
    except (ValueError, RuntimeError) as error:
        raise ConversionError(f"Verification of the converted model failed: {error}") from None


def convert_accessory(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    dinov2_num_heads: int | None = None,
    overwrite: bool = False,
    clip_activation: str | None = None,
    clip_num_heads: int | None = None,
    qformer_num_heads: int | None = None,
    qformer_vision_num_heads: int | None = None,
    max_shard_size: int | str = "5GB",
    verify: bool = False,
) -> Path:
    """Convert a LLaMA2-Accessory SPHINX checkpoint folder into a transformers folder (remote code included).

    The output holds the config, `model.safetensors` (or `model-0000i-of-0000n.safetensors` with
    `model.safetensors.index.json`), the processor and the model's code, and loads with
    `AutoModelForImageTextToText.from_pretrained` after `import sphinx_x` or with `trust_remote_code=True`. It is
    written to a temporary sibling of `dst` and renamed at the end: on any error `dst` is left as it was.

    Args:
        src: folder with `consolidated.NN-of-MM.model.pth` (any number of model-parallel shards), `config.json`,
            `meta.json`, `tokenizer.model`.
        dst: output folder.
        dtype: dtype of the written weights (`torch.float32`, `torch.bfloat16`, `torch.float16` or their names).
        overwrite: replace an existing `dst`.
        clip_activation: `"gelu"` or `"quick_gelu"` for CLIP ViT-L/14 (four-encoder layouts). By default the one the
            reference inference runs: exact `"gelu"`, or `"quick_gelu"` when config.json sets
            `load_pretrained_visual_encoder` (the reference then loads OpenAI's QuickGELU model).
        dinov2_num_heads, clip_num_heads, qformer_num_heads: attention heads of those encoders, needed only when
            their width is not a multiple of 64 (released encoders use 64-wide heads: they are width / 64).
        qformer_vision_num_heads: heads of the BLIP-2 vision tower, needed only when its width differs from the
            bundled BLIP-2 config (1408 wide, 16 heads).
        max_shard_size: largest weight file (`save_pretrained`'s convention, e.g. `"5GB"` or bytes).
        verify: reload the result and run a forward pass and a short generation on a synthetic image before
            renaming it into place; needs the memory of the whole model.

    Returns:
        `dst`.
    """
    src, dst = Path(src), Path(dst)
    heads = {
        "dinov2_num_heads": dinov2_num_heads,
        "clip_num_heads": clip_num_heads,
        "qformer_num_heads": qformer_num_heads,
        "qformer_vision_num_heads": qformer_vision_num_heads,
    }
    for name, value in heads.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            flag = "--" + name.replace("_", "-")
            raise ConversionError(f"{flag} must be a positive number of attention heads, got {value!r}.")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConversionError(f"dtype must be one of {list(DTYPES)}, not {dtype!r}.")
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ConversionError(f"dtype must be one of {list(DTYPES)}, not {dtype}.")
    if not src.is_dir():
        raise ConversionError(f"{src} is not a folder.")
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst} already exists; pass --overwrite to replace it.")
    if dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents:
        raise ConversionError(f"{dst} would replace the source folder {src}; choose another output folder.")
    llama_type = read_json(src / "meta.json", "an Accessory checkpoint has one.").get("llama_type")
    if llama_type not in RELEASED_LAYOUTS:
        raise ConversionError(
            f"llama_type {llama_type!r} (meta.json) is not supported; known: {', '.join(RELEASED_LAYOUTS)}."
        )
    args = read_json(src / "config.json", "an Accessory checkpoint has one.")
    tokenizer = build_tokenizer(src)
    shards = AccessoryShards(src)

    config = sphinx_config(
        llama_type,
        args,
        shards.shapes,
        clip_activation=clip_activation,
        clip_num_heads=clip_num_heads,
        dinov2_num_heads=dinov2_num_heads,
        qformer_num_heads=qformer_num_heads,
        qformer_vision_num_heads=qformer_vision_num_heads,
    )
    if tokenizer.convert_tokens_to_ids("<image>") != config.image_token_id:
        raise ConversionError(
            f"tokenizer.model has {len(tokenizer) - 1} pieces but the embedding table has "
            f"{config.text_config.vocab_size} rows: the tokenizer belongs to another checkpoint."
        )
    with torch.device("meta"):
        model = SphinxXForConditionalGeneration(config)
    rules = conversion_rules(config, shards.keys())
    planned = plan_weights(rules, shards, model.state_dict(), dtype)

    image_processor = SphinxXImageProcessor.from_model_config(config)
    processor = SphinxXProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.generation_config = generation_config(tokenizer)
    with atomic_output_folder(dst, overwrite=overwrite) as tmp:
        tensors = converted_tensors(rules, shards, planned, dtype)
        write_sharded_safetensors(tmp, planned, tensors, max_shard_size=max_shard_size)
        shards.close()
        save_config_and_code(model, processor, tmp, dtype)
        if verify:
            verify_model_folder(tmp, dtype)
    return dst
