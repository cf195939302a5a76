"""The vision encoders of LLaMA2-Accessory SPHINX checkpoints as HF modules: configs inferred from tensor shapes, and
the rules that turn their tensors into `SphinxXModel` weights (spec 5.4 and 7.5).

Config functions read only shapes (`shapes`: key -> `torch.Size`, keys without the `llma.` prefix), so the same code
sizes a 2 MB test checkpoint and the released ones. Every rule lists the source keys it consumes; source keys no rule
consumes are reported by the caller, so nothing is dropped silently.
"""

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Blip2Config, CLIPVisionConfig, ConvNextConfig, Dinov2Config

from sphinx_x.presets import blip2_qformer

from .common import ConversionError


CLIP_PREFIX = "clip.visual."
CONVNEXT_PREFIX = "openclip_convnext_xxl."
DINOV2_PREFIX = "dinov2_vitg14."
QFORMER_PREFIX = "qformer."


@dataclass(frozen=True)
class Rule:
    """Output tensors computed from source tensors: `convert(*[state[key] for key in sources]) -> {key: tensor}`.

    A conversion runs its rules twice: on meta tensors, to plan every output key and shape before reading any data,
    then on the real tensors, one rule at a time.
    """

    sources: tuple[str, ...]
    convert: Callable[..., dict[str, torch.Tensor]]


def renamed(source: str, target: str) -> Rule:
    return Rule((source,), lambda tensor: {target: tensor})


def split_rows(source: str, targets: Iterable[str]) -> Rule:
    """A fused projection (`[n * out, in]` weight or `[n * out]` bias) split into `n` equal row blocks, in order."""
    targets = tuple(targets)
    return Rule((source,), lambda tensor: dict(zip(targets, tensor.chunk(len(targets), dim=0))))


def rename_all(keys: Iterable[str], prefix: str, renames: list[tuple[str, str]], target_prefix: str) -> list[Rule]:
    """`renamed` rules for the keys under `prefix` that match one of the `(regex, replacement)` pairs (anchored at the
    start of the key without its prefix); other keys are left to other rules or reported as unexpected."""
    rules = []
    for key in keys:
        if not key.startswith(prefix):
            continue
        name = key.removeprefix(prefix)
        for pattern, replacement in renames:
            new_name, hits = re.subn("^" + pattern, replacement, name)
            if hits:
                rules.append(renamed(key, target_prefix + new_name))
                break
    return rules


def block_indices(keys: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct block numbers `i` of the keys matching `pattern` (with one `(\\d+)` group)."""
    return sorted({int(m.group(1)) for key in keys if (m := re.match(pattern, key))})


def count_indexed(keys: Iterable[str], pattern: str) -> int:
    """Number of blocks matching `pattern` (see `block_indices`); they must be numbered `0 .. n-1`."""
    indices = block_indices(keys, pattern)
    if indices != list(range(len(indices))):
        raise ConversionError(f"Blocks matching {pattern} are not numbered 0..n-1: {indices}.")
    return len(indices)


def attention_heads(width: int, encoder: str, num_heads: int | None, option: str) -> int:
    """Heads of an encoder: `num_heads` when given, else `width / 64` (CLIP-L, DINOv2-g and the Q-Former have
    64-wide heads)."""
    if num_heads is None and width % 64:
        raise ConversionError(f"{encoder} width {width} is not a multiple of 64: give its head count ({option}).")
    num_heads = num_heads or width // 64
    if width % num_heads:
        raise ConversionError(f"{encoder} width {width} does not split into {num_heads} heads ({option}).")
    return num_heads


def native_image_size(positions: int, patch_size: int, encoder: str) -> int:
    """Input side of a ViT whose positional table has `positions = 1 + grid**2` rows."""
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ConversionError(f"{encoder} has {positions} positions, not 1 + a square grid.")
    return grid * patch_size


# ----------------------------------------------------------------------------------------------------------------------
# CLIP ViT-L/14 (open_clip) -> CLIPVisionModel


CLIP_RENAMES = [
    (r"conv1\.weight$", "embeddings.patch_embedding.weight"),
    (r"class_embedding$", "embeddings.class_embedding"),
    (r"positional_embedding$", "embeddings.position_embedding.weight"),
    (r"ln_pre\.", "pre_layrnorm."),
    (r"ln_post\.", "post_layernorm."),
    (r"transformer\.resblocks\.(\d+)\.ln_1\.", r"encoder.layers.\1.layer_norm1."),
    (r"transformer\.resblocks\.(\d+)\.ln_2\.", r"encoder.layers.\1.layer_norm2."),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"encoder.layers.\1.mlp.fc1."),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"encoder.layers.\1.mlp.fc2."),
]


def clip_config(shapes: Mapping, *, hidden_act: str, num_heads: int | None) -> CLIPVisionConfig:
    p = CLIP_PREFIX
    width = shapes[f"{p}class_embedding"][0]
    patch_size = shapes[f"{p}conv1.weight"][-1]
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=shapes[f"{p}transformer.resblocks.0.mlp.c_fc.weight"][0],
        num_hidden_layers=count_indexed(shapes, re.escape(p) + r"transformer\.resblocks\.(\d+)\."),
        num_attention_heads=attention_heads(width, "CLIP", num_heads, "--clip-num-heads / clip_num_heads="),
        image_size=native_image_size(shapes[f"{p}positional_embedding"][0], patch_size, "CLIP"),
        patch_size=patch_size,
        layer_norm_eps=1e-5,
        hidden_act=hidden_act,
    )


def clip_rules(keys: Iterable[str]) -> list[Rule]:
    """open_clip's visual tower; its fused `in_proj` (rows q | k | v) is split for HF's separate projections."""
    keys = list(keys)
    target = "model.clip.model."
    rules = rename_all(keys, CLIP_PREFIX, CLIP_RENAMES, target)
    in_proj = re.escape(CLIP_PREFIX) + r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)"
    for key in keys:
        if m := re.fullmatch(in_proj, key):
            layer, kind = m.groups()
            rules.append(split_rows(key, (f"{target}encoder.layers.{layer}.self_attn.{p}_proj.{kind}" for p in "qkv")))
    return rules


# ----------------------------------------------------------------------------------------------------------------------
# OpenCLIP ConvNeXt-XXLarge (timm trunk) -> ConvNextModel


CONVNEXT_RENAMES = [
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


def convnext_config(shapes: Mapping, view_size: int, prefix: str = CONVNEXT_PREFIX) -> ConvNextConfig:
    """timm ConvNeXt trunk (LayerNorm eps 1e-5 everywhere) taking `view_size` px views; depths and widths are read
    from the tensor `shapes` of the keys under `prefix`."""
    num_stages = count_indexed(shapes, re.escape(prefix) + r"stages\.(\d+)\.")
    depths = [count_indexed(shapes, re.escape(f"{prefix}stages.{s}.") + r"blocks\.(\d+)\.") for s in range(num_stages)]
    widths = [shapes[f"{prefix}stages.{s}.blocks.0.conv_dw.weight"][0] for s in range(num_stages)]
    return ConvNextConfig(
        num_stages=num_stages,
        depths=depths,
        hidden_sizes=widths,
        patch_size=shapes[f"{prefix}stem.0.weight"][-1],
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        image_size=view_size,
        drop_path_rate=0.0,
    )


def convnext_rules(keys: Iterable[str], prefix: str = CONVNEXT_PREFIX) -> list[Rule]:
    return rename_all(keys, prefix, CONVNEXT_RENAMES, "model.convnext.model.")


def convert_convnext(state: dict, prefix: str = CONVNEXT_PREFIX) -> dict:
    """timm ConvNeXt tensors under `prefix` -> `model.convnext.model.*` tensors of `SphinxXModel`."""
    rules = convnext_rules(state, prefix)
    unexpected = {key for key in state if key.startswith(prefix)} - {rule.sources[0] for rule in rules}
    if unexpected:
        raise ConversionError(f"Unexpected ConvNeXt keys {sorted(unexpected)[:8]}.")
    return {target: tensor for rule in rules for target, tensor in rule.convert(state[rule.sources[0]]).items()}


# ----------------------------------------------------------------------------------------------------------------------
# DINOv2 ViT-g/14 (torch hub) -> Dinov2Model


DINOV2_RENAMES = [
    (r"cls_token$", "embeddings.cls_token"),
    (r"mask_token$", "embeddings.mask_token"),
    (r"patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"norm\.", "layernorm."),
    (r"blocks\.(\d+)\.norm([12])\.", r"encoder.layer.\1.norm\2."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.o_proj."),
    (r"blocks\.(\d+)\.mlp\.w3\.", r"encoder.layer.\1.mlp.down_proj."),
    (r"blocks\.(\d+)\.ls([12])\.gamma$", r"encoder.layer.\1.layer_scale\2.lambda1"),
]


def dinov2_config(
    shapes: Mapping, *, view_size: int, num_heads: int | None, prefix: str = DINOV2_PREFIX
) -> Dinov2Config:
    """DINOv2 with SwiGLU FFN and LayerScale, taking `view_size` px views (its positions are resampled to them)."""
    width = shapes[f"{prefix}cls_token"][-1]
    swiglu_hidden = shapes[f"{prefix}blocks.0.mlp.w12.weight"][0] // 2
    # DINOv2's SwiGLUFFNFused sizes its hidden layer as int(width * mlp_ratio * 2/3) rounded up to a multiple of 8.
    if (int(width * 4 * 2 / 3) + 7) // 8 * 8 != swiglu_hidden:
        raise ConversionError(f"DINOv2 SwiGLU width {swiglu_hidden} does not match mlp_ratio 4 for width {width}.")
    return Dinov2Config(
        hidden_size=width,
        num_hidden_layers=count_indexed(shapes, re.escape(prefix) + r"blocks\.(\d+)\."),
        num_attention_heads=attention_heads(width, "DINOv2", num_heads, "--dinov2-num-heads / dinov2_num_heads="),
        mlp_ratio=4,
        use_swiglu_ffn=True,
        patch_size=shapes[f"{prefix}patch_embed.proj.weight"][-1],
        image_size=view_size,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        qkv_bias=True,
    )


def dinov2_position_table(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """The reference's positional table for a `grid x grid` patch input: DINOv2's `interpolate_pos_encoding`
    (bicubic in float32 with scale factor `(grid + 0.1) / M`, no antialias), which HF would compute differently.

    pos_embed: `[1, 1 + M*M, C]` -> `[1, 1 + grid*grid, C]`, in the dtype of `pos_embed`.
    """
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


def dinov2_rules(keys: Iterable[str], token_grid: int, prefix: str = DINOV2_PREFIX) -> list[Rule]:
    keys = list(keys)
    target = "model.dinov2.model."
    rules = rename_all(keys, prefix, DINOV2_RENAMES, target)
    for key in keys:
        name = key.removeprefix(prefix) if key.startswith(prefix) else None
        if name == "pos_embed":
            # Stored already resampled to the view grid; HF then uses it as is (config.image_size = view size).
            table = f"{target}embeddings.position_embeddings"
            rules.append(Rule((key,), lambda pos_embed: {table: dinov2_position_table(pos_embed, token_grid)}))
        elif m := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", name or ""):
            layer, kind = m.groups()
            rules.append(split_rows(key, (f"{target}encoder.layer.{layer}.attention.{p}_proj.{kind}" for p in "qkv")))
        elif m := re.fullmatch(r"blocks\.(\d+)\.mlp\.w12\.(weight|bias)", name or ""):
            # The fused SwiGLU input: the first half goes through SiLU (gate), the second half is the up branch.
            layer, kind = m.groups()
            mlp = f"{target}encoder.layer.{layer}.mlp."
            rules.append(split_rows(key, (f"{mlp}gate_proj.{kind}", f"{mlp}up_proj.{kind}")))
    return rules


# ----------------------------------------------------------------------------------------------------------------------
# BLIP-2 vision tower + Q-Former (HF Blip2Model of an older transformers) -> SphinxXQFormerEncoder


def qformer_config(shapes: Mapping, *, num_heads: int | None, vision_num_heads: int | None) -> Blip2Config:
    """The bundled Salesforce/blip2-opt-2.7b config with every size read from the tensors.

    The BLIP-2 (EVA) vision tower has 88-wide heads: its head count is the bundled one when the width is the bundled
    width, else it must be given.
    """
    bundled = blip2_qformer()
    v, q = f"{QFORMER_PREFIX}vision_model.", f"{QFORMER_PREFIX}qformer."
    vision_width = shapes[f"{v}embeddings.class_embedding"][-1]
    if vision_num_heads is None:
        if vision_width != bundled.vision_config.hidden_size:
            raise ConversionError(
                f"The BLIP-2 vision tower is {vision_width} wide, not the bundled {bundled.vision_config.hidden_size}: "
                "give its head count (--qformer-vision-num-heads / qformer_vision_num_heads=)."
            )
        vision_num_heads = bundled.vision_config.num_attention_heads
    elif vision_width % vision_num_heads:
        raise ConversionError(f"BLIP-2 vision width {vision_width} does not split into {vision_num_heads} heads.")
    patch_size = shapes[f"{v}embeddings.patch_embedding.weight"][-1]
    vision_config = {
        **bundled.vision_config.to_dict(),
        "hidden_size": vision_width,
        "intermediate_size": shapes[f"{v}encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": count_indexed(shapes, re.escape(v) + r"encoder\.layers\.(\d+)\."),
        "num_attention_heads": vision_num_heads,
        "patch_size": patch_size,
        "image_size": native_image_size(shapes[f"{v}embeddings.position_embedding"][1], patch_size, "BLIP-2 vision"),
        "qkv_bias": any(f"{v}encoder.layers.0.self_attn.{bias}" in shapes for bias in ("q_bias", "qkv.bias")),
    }

    _, num_queries, width = shapes[f"{QFORMER_PREFIX}query_tokens"]
    num_layers = count_indexed(shapes, re.escape(q) + r"encoder\.layer\.(\d+)\.")
    cross = block_indices(shapes, re.escape(q) + r"encoder\.layer\.(\d+)\.crossattention\.")
    # HF puts cross-attention in the layers `i % cross_attention_frequency == 0`.
    frequency = cross[1] - cross[0] if len(cross) > 1 else num_layers
    if not cross or cross != list(range(0, num_layers, frequency)):
        raise ConversionError(f"Q-Former cross-attention layers {cross} are not every n-th layer from layer 0.")
    qformer_config = {
        **bundled.qformer_config.to_dict(),
        "hidden_size": width,
        "num_hidden_layers": num_layers,
        "num_attention_heads": attention_heads(
            width, "Q-Former", num_heads, "--qformer-num-heads / qformer_num_heads="
        ),
        "intermediate_size": shapes[f"{q}encoder.layer.0.intermediate_query.dense.weight"][0],
        "cross_attention_frequency": frequency,
        "encoder_hidden_size": shapes[f"{q}encoder.layer.0.crossattention.attention.key.weight"][1],
    }
    return Blip2Config(vision_config=vision_config, qformer_config=qformer_config, num_query_tokens=num_queries)


# The BLIP-2 tensors the Q-Former features depend on (its text branch, `intermediate` / `output`, is unused).
QFORMER_KEYS = re.compile(
    r"query_tokens$"
    r"|vision_model\.(embeddings|post_layernorm)\."
    r"|vision_model\.encoder\.layers\.\d+\.(layer_norm[12]|mlp|self_attn\.qkv|self_attn\.projection)\."
    r"|qformer\.(layernorm|encoder\.layer\.\d+\.(attention|crossattention|intermediate_query|output_query))\."
)


def qformer_rules(keys: Iterable[str]) -> list[Rule]:
    """BLIP-2 keys are already HF names. Older transformers stored the vision attention's q and v biases apart
    (`q_bias`, `v_bias`; the k bias is zero); transformers 5 holds them in one `qkv.bias` `[q | 0 | v]`."""
    target = "model.qformer."
    rules = []
    for key in keys:
        name = key.removeprefix(QFORMER_PREFIX) if key.startswith(QFORMER_PREFIX) else ""
        if QFORMER_KEYS.match(name):
            rules.append(renamed(key, target + name))
        elif m := re.fullmatch(r"(vision_model\.encoder\.layers\.\d+\.self_attn\.)q_bias", name):
            attention = m.group(1)
            rules.append(
                Rule(
                    (key, f"{QFORMER_PREFIX}{attention}v_bias"),
                    lambda q, v, out=f"{target}{attention}qkv.bias": {out: torch.cat([q, torch.zeros_like(v), v])},
                )
            )
    return rules
