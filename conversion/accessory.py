"""LLaMA2-Accessory SPHINX checkpoints -> SPHINX-X in transformers format.

A source folder holds `consolidated.NN-of-MM.model.pth` shards (`{"model": state_dict}`, keys prefixed `llma.`),
`config.json` (ModelArgs), `meta.json` (`{"llama_type": ...}`) and `tokenizer.model` (SentencePiece).
"""

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import ConvNextConfig, Dinov2Config, GenerationConfig, LlamaConfig, LlamaTokenizer

from sphinx_x import SphinxXConfig, SphinxXForConditionalGeneration, SphinxXImageProcessor, SphinxXProcessor
from sphinx_x.processors.processing_sphinx_x import STOP_STRING

from .common import ConversionError, write_model_folder


SHARD_PATTERN = re.compile(r"consolidated\.(\d{2})-of-(\d{2})\.model\.pth")

# llama_type -> canvas geometry of the released checkpoints (spec section 3.2).
LAYOUTS = {
    "llama_ens5_light": {"tile_size": 512, "image_grid": [2, 2]},
}

# fairscale tensor-parallel layouts: column-parallel weights are split on dim 0, row-parallel ones and the
# (hidden-sharded) token embedding on dim 1; everything else is replicated in every shard.
SPLIT_ON_DIM0 = re.compile(r"layers\.\d+\.(attention\.w[qkv]|feed_forward\.w[13])\.weight$|^output\.weight$")
SPLIT_ON_DIM1 = re.compile(r"layers\.\d+\.(attention\.wo|feed_forward\.w2)\.weight$|^tok_embeddings\.weight$")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path.name} is missing from {path.parent}; a LLaMA2-Accessory checkpoint has one.") from None
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON ({error}).") from None


def shard_paths(src: Path) -> list[Path]:
    shards = sorted(p for p in src.iterdir() if SHARD_PATTERN.fullmatch(p.name))
    if not shards:
        raise ConversionError(f"No consolidated.NN-of-MM.model.pth shards in {src}.")
    counts = {int(SHARD_PATTERN.fullmatch(p.name).group(2)) for p in shards}
    if len(counts) != 1:
        raise ConversionError(f"Shards of different model-parallel sizes in {src}: {sorted(p.name for p in shards)}.")
    world = counts.pop()
    ranks = [int(SHARD_PATTERN.fullmatch(p.name).group(1)) for p in shards]
    if ranks != list(range(world)):
        missing = sorted(set(range(world)) - set(ranks))
        raise ConversionError(f"{src} holds {len(shards)} of {world} shards; missing ranks {missing}.")
    return shards


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises several types for truncated zips and refused pickles
        raise ConversionError(f"Cannot read {path.name}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"{path.name} does not hold a state dict.")
    return {key.removeprefix("llma."): value for key, value in state.items()}


def merge_shards(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Full tensors from tensor-parallel shards (fairscale split dims; replicated tensors taken from rank 0)."""
    merged = {}
    for key, tensor in shards[0].items():
        if len(shards) > 1 and SPLIT_ON_DIM0.search(key):
            tensor = torch.cat([shard[key] for shard in shards], dim=0)
        elif len(shards) > 1 and SPLIT_ON_DIM1.search(key):
            tensor = torch.cat([shard[key] for shard in shards], dim=1)
        merged[key] = tensor
    return merged


def permute_for_rotate_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved (Meta, complex-pair) RoPE rows -> rotate-half rows, per head (spec 7.2)."""
    out_features, in_features = weight.shape
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, in_features).transpose(1, 2).reshape(out_features, in_features)


def llama_config(args: dict, state: dict) -> LlamaConfig:
    dim, n_heads = args["dim"], args["n_heads"]
    return LlamaConfig(
        vocab_size=state["tok_embeddings.weight"].shape[0],
        hidden_size=dim,
        intermediate_size=state["layers.0.feed_forward.w1.weight"].shape[0],
        num_hidden_layers=args["n_layers"],
        num_attention_heads=n_heads,
        num_key_value_heads=args.get("n_kv_heads") or n_heads,
        rms_norm_eps=args.get("norm_eps", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": float(args.get("rope_theta", 10000.0))},
        # The reference runs with a 4096-token window, image tokens included.
        max_position_embeddings=max(4096, args.get("max_seq_len", 4096)),
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def convnext_config(state: dict, prefix: str = "openclip_convnext_xxl.") -> ConvNextConfig:
    depths, widths = [], []
    for stage in range(4):
        blocks = {int(k.removeprefix(prefix).split(".")[3]) for k in state if k.startswith(f"{prefix}stages.{stage}.blocks.")}
        depths.append(len(blocks))
        widths.append(state[f"{prefix}stages.{stage}.blocks.0.gamma"].shape[0])
    return ConvNextConfig(
        depths=depths, hidden_sizes=widths, layer_norm_eps=1e-5, hidden_act="gelu", image_size=512, drop_path_rate=0.0
    )


def dinov2_config(state: dict, num_heads: int | None, prefix: str = "dinov2_vitg14.") -> Dinov2Config:
    width = state[f"{prefix}cls_token"].shape[-1]
    depth = len({int(k.removeprefix(prefix).split(".")[1]) for k in state if k.startswith(f"{prefix}blocks.")})
    num_heads = num_heads or (width // 64 if width % 64 == 0 else None)
    if num_heads is None:
        raise ConversionError(f"DINOv2 width {width} is not a multiple of 64: give its head count (--dinov2-num-heads).")
    swiglu_hidden = state[f"{prefix}blocks.0.mlp.w12.weight"].shape[0] // 2
    config = Dinov2Config(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=num_heads,
        mlp_ratio=4,
        use_swiglu_ffn=True,
        patch_size=14,
        image_size=224,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        qkv_bias=True,
    )
    if (int(width * 4 * 2 / 3) + 7) // 8 * 8 != swiglu_hidden:
        raise ConversionError(f"DINOv2 SwiGLU width {swiglu_hidden} does not match mlp_ratio 4 for width {width}.")
    return config


def dinov2_position_table(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """The reference's positional table for a `grid x grid` patch input: DINOv2's `interpolate_pos_encoding`
    (bicubic in float32 with scale factor `(grid + 0.1) / M`, no antialias), which HF would compute differently."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(patch_pos.shape[1] ** 0.5)
    scale = (grid + 0.1) / side
    patch_pos = F.interpolate(
        patch_pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2),
        scale_factor=(scale, scale),
        mode="bicubic",
        antialias=False,
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([cls_pos.float(), patch_pos], dim=1).to(pos_embed.dtype)


def convert_convnext(state: dict, prefix: str = "openclip_convnext_xxl.") -> dict:
    renames = [
        (r"stem\.0\.", "embeddings.patch_embeddings."),
        (r"stem\.1\.", "embeddings.layernorm."),
        (r"stages\.(\d+)\.downsample\.", r"encoder.stages.\1.downsampling_layer."),
        (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"encoder.stages.\1.layers.\2.dwconv."),
        (r"stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"encoder.stages.\1.layers.\2.layernorm."),
        (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"encoder.stages.\1.layers.\2.pwconv1."),
        (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"encoder.stages.\1.layers.\2.pwconv2."),
        (r"stages\.(\d+)\.blocks\.(\d+)\.gamma$", r"encoder.stages.\1.layers.\2.layer_scale_parameter"),
        (r"head\.norm\.", "layernorm."),
    ]
    out = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        name = key.removeprefix(prefix)
        for pattern, replacement in renames:
            name, hits = re.subn("^" + pattern, replacement, name)
            if hits:
                break
        else:
            raise ConversionError(f"Unexpected ConvNeXt key {key}.")
        out[f"model.convnext.model.{name}"] = tensor
    return out


def convert_dinov2(state: dict, token_grid: int, prefix: str = "dinov2_vitg14.") -> dict:
    out = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        name = key.removeprefix(prefix)
        block = re.match(r"blocks\.(\d+)\.(.*)", name)
        if name == "pos_embed":
            out["embeddings.position_embeddings"] = dinov2_position_table(tensor, token_grid)
        elif name in ("cls_token", "mask_token"):
            out[f"embeddings.{name}"] = tensor
        elif name.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + name.split(".")[-1]] = tensor
        elif name.startswith("norm."):
            out["layernorm." + name.split(".")[-1]] = tensor
        elif block:
            layer, rest = f"encoder.layer.{block.group(1)}.", block.group(2)
            if rest.startswith("attn.qkv."):
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    out[f"{layer}attention.{part}.{rest.split('.')[-1]}"] = chunk
            elif rest.startswith("attn.proj."):
                out[f"{layer}attention.o_proj.{rest.split('.')[-1]}"] = tensor
            elif rest.startswith("mlp.w12."):
                # DINOv2's fused SwiGLU: the first half goes through SiLU (gate), the second half is the up branch.
                gate, up = tensor.chunk(2, dim=0)
                out[f"{layer}mlp.gate_proj.{rest.split('.')[-1]}"] = gate
                out[f"{layer}mlp.up_proj.{rest.split('.')[-1]}"] = up
            elif rest.startswith("mlp.w3."):
                out[f"{layer}mlp.down_proj.{rest.split('.')[-1]}"] = tensor
            elif rest in ("ls1.gamma", "ls2.gamma"):
                out[f"{layer}layer_scale{rest[2]}.lambda1"] = tensor
            elif rest.startswith(("norm1.", "norm2.")):
                out[layer + rest] = tensor
            else:
                raise ConversionError(f"Unexpected DINOv2 key {key}.")
        else:
            raise ConversionError(f"Unexpected DINOv2 key {key}.")
    return {f"model.dinov2.model.{name}": tensor for name, tensor in out.items()}


def convert_llm(state: dict, config: LlamaConfig) -> dict:
    prefix = "model.language_model."
    out = {
        f"{prefix}embed_tokens.weight": state["tok_embeddings.weight"],
        f"{prefix}norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    names = {
        "attention.wv.weight": "self_attn.v_proj.weight",
        "attention.wo.weight": "self_attn.o_proj.weight",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
        "attention_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
    }
    for layer in range(config.num_hidden_layers):
        src, dst = f"layers.{layer}.", f"{prefix}layers.{layer}."
        out[f"{dst}self_attn.q_proj.weight"] = permute_for_rotate_half(
            state[f"{src}attention.wq.weight"], config.num_attention_heads
        )
        out[f"{dst}self_attn.k_proj.weight"] = permute_for_rotate_half(
            state[f"{src}attention.wk.weight"], config.num_key_value_heads
        )
        for old, new in names.items():
            out[dst + new] = state[src + old]
    return out


def convert_multimodal_tags(state: dict) -> dict:
    return {
        "model.image_start": state["start_img"].reshape(-1),
        "model.image_end": state["end_img"].reshape(-1),
        "model.visual_projector.linear.weight": state["visual_proj.0.weight"],
        "model.visual_projector.linear.bias": state["visual_proj.0.bias"],
        "model.visual_projector.norm.weight": state["visual_proj.1.weight"],
        "model.visual_projector.norm.bias": state["visual_proj.1.bias"],
    }


def build_tokenizer(src: Path) -> LlamaTokenizer:
    if not (src / "tokenizer.model").is_file():
        raise ConversionError(f"tokenizer.model is missing from {src}.")
    # legacy=True keeps SentencePiece's dummy prefix after the image placeholders, so the text after the image block
    # splits exactly as the reference's `[BOS] + sp.encode(prompt)`.
    tokenizer = LlamaTokenizer.from_pretrained(str(src), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.pad_token = tokenizer.unk_token  # the reference pads with id 0
    tokenizer.init_kwargs.update(legacy=True, add_bos_token=True, add_eos_token=False)
    return tokenizer


def stop_token_sequences(tokenizer) -> list[list[int]]:
    """Token sequences of the terminator as a segment and glued to preceding text (reference stop criteria)."""
    as_segment = tokenizer.encode(STOP_STRING, add_special_tokens=False)
    prefix = tokenizer.encode("@", add_special_tokens=False)
    glued = tokenizer.encode("@" + STOP_STRING, add_special_tokens=False)[len(prefix) :]
    return [list(seq) for seq in dict.fromkeys([tuple(as_segment), tuple(glued)]) if seq]


def generation_config(tokenizer) -> GenerationConfig:
    """Greedy decoding that stops at EOS or at the reference terminator `"\\n###"`."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=512,
        do_sample=False,
        stop_token_sequences=stop_token_sequences(tokenizer),
    )


def convert_accessory(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    dinov2_num_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a LLaMA2-Accessory SPHINX checkpoint folder into a transformers folder (remote code included)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConversionError(f"{src} is not a folder.")
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst} already exists; pass --overwrite to replace it.")
    llama_type = read_json(src / "meta.json").get("llama_type")
    if llama_type not in LAYOUTS:
        raise ConversionError(f"llama_type {llama_type!r} is not supported; known: {', '.join(LAYOUTS)}.")
    args = read_json(src / "config.json")
    state = merge_shards([load_shard(path) for path in shard_paths(src)])

    text_config = llama_config(args, state)
    config = SphinxXConfig(
        text_config=text_config,
        convnext_config=convnext_config(state),
        dinov2_config=dinov2_config(state, dinov2_num_heads),
        use_skip_tokens=False,
        **LAYOUTS[llama_type],
    )
    if config.vision_feature_size != state["visual_proj.0.weight"].shape[1]:
        raise ConversionError(
            f"visual_proj takes {state['visual_proj.0.weight'].shape[1]} features but the encoders give "
            f"{config.vision_feature_size}: config.json and the tensors disagree."
        )
    weights = {
        **convert_llm(state, text_config),
        **convert_multimodal_tags(state),
        **convert_convnext(state),
        **convert_dinov2(state, config.token_grid_size),
    }
    with torch.device("meta"):
        model = SphinxXForConditionalGeneration(config)
    missing = set(model.state_dict()) - set(weights) - {"model.image_skip"}
    if missing:
        raise ConversionError(f"The checkpoint lacks tensors for: {sorted(missing)[:8]}")
    model = SphinxXForConditionalGeneration(config).to(dtype)
    weights["model.image_skip"] = model.model.image_skip.detach()  # untrained: skipping is off for released models
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True, assign=True)

    tokenizer = build_tokenizer(src)
    if tokenizer.convert_tokens_to_ids("<image>") != config.image_token_id:
        raise ConversionError("The tokenizer vocabulary and the embedding table disagree in size.")
    image_processor = SphinxXImageProcessor(
        tile_size=config.tile_size,
        image_grid=config.image_grid,
        skip_padded_tiles=config.use_skip_tokens,
        tokens_per_view=config.tokens_per_view,
    )
    processor = SphinxXProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.generation_config = generation_config(tokenizer)
    return write_model_folder(model, processor, dst, overwrite=overwrite)
