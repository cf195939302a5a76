"""Tiny random LLaMA2-Accessory SPHINX checkpoints in the original format, for every released layout.

`full_state_dict` builds the merged tensors with the keys and shapes of spec section 5 at the real geometry (16x16
token grids, 32 Q-Former queries, DINOv2's 37x37 positional table, the unused CLIP text leftovers, the Q-Former text
branch, BLIP-2's separate q/v biases) but narrow widths. `write_checkpoint` cuts them into model-parallel shards with
fairscale's rules (spec 6.3; written independently of the converter's merge) and writes the folder: shards
`consolidated.NN-of-MM.model.pth` = `{"model": {"llma." + key: tensor}}`, config.json, meta.json and the fixture's
512-piece tokenizer.model.
"""

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch


FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "sphinx-tiny-1k" / "checkpoint" / "tokenizer.model"

# llama_type -> (LLM family, has CLIP + Q-Former, image positions of one image in the released geometry).
LAYOUTS = {
    "llama_ens_light": ("tinyllama", False, 259),
    "llama_ens5_light": ("tinyllama", False, 1295),
    "llama_ens": ("llama2", True, 291),
    "llama_ens5": ("llama2", True, 1455),
    "mixtral_sparse_ens": ("mixtral", True, 291),
    "mixtral_sparse_ens5": ("mixtral", True, 1455),
}


@dataclass(frozen=True)
class Sizes:
    """Widths and depths of a tiny checkpoint (the geometry-defining sizes stay the real ones)."""

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = 2  # None: as many as n_heads (LLaMA2-13B's config.json)
    ffn: int = 96  # dense FFN, or per expert for Mixtral
    experts: int = 4
    vocab: int = 512  # the fixture tokenizer
    clip_width: int = 64
    clip_layers: int = 2
    convnext_widths: tuple = (8, 16, 24, 32)
    convnext_depths: tuple = (1, 1, 2, 1)
    dinov2_width: int = 64
    dinov2_layers: int = 2
    blip_width: int = 48  # not the bundled 1408: needs qformer_vision_num_heads
    blip_layers: int = 2
    blip_ffn: int = 96
    qformer_width: int = 64
    qformer_layers: int = 2
    qformer_ffn: int = 128
    queries: int = 32


# The released models (spec 4.5, 5.4): with these sizes the shapes are those of the real checkpoints.
TINYLLAMA = dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn=5632, vocab=32000)
LLAMA2_13B = dict(dim=5120, n_layers=40, n_heads=40, n_kv_heads=None, ffn=13824, vocab=32000)
MIXTRAL_8X7B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn=14336, experts=8, vocab=32000)
RELEASED_ENCODERS = dict(
    clip_width=1024, clip_layers=24, convnext_widths=(384, 768, 1536, 3072), convnext_depths=(3, 4, 30, 3),
    dinov2_width=1536, dinov2_layers=40, blip_width=1408, blip_layers=39, blip_ffn=6144, qformer_width=768,
    qformer_layers=12, qformer_ffn=3072,
)
RELEASED_SIZES = {
    family: Sizes(**llm, **RELEASED_ENCODERS)
    for family, llm in (("tinyllama", TINYLLAMA), ("llama2", LLAMA2_13B), ("mixtral", MIXTRAL_8X7B))
}


def llm_keys(s: Sizes, moe: bool) -> dict[str, tuple]:
    kv = s.n_kv_heads or s.n_heads
    head_dim = s.dim // s.n_heads
    shapes = {"tok_embeddings.weight": (s.vocab, s.dim), "norm.weight": (s.dim,), "output.weight": (s.vocab, s.dim)}
    for i in range(s.n_layers):
        p = f"layers.{i}."
        shapes.update({
            f"{p}attention.wq.weight": (s.n_heads * head_dim, s.dim),
            f"{p}attention.wk.weight": (kv * head_dim, s.dim),
            f"{p}attention.wv.weight": (kv * head_dim, s.dim),
            f"{p}attention.wo.weight": (s.dim, s.n_heads * head_dim),
            f"{p}attention_norm.weight": (s.dim,),
            f"{p}ffn_norm.weight": (s.dim,),
        })
        if moe:  # raw parameters without `.weight`, all three [E * F, dim] (w2 stored transposed)
            shapes[f"{p}feed_forward.gate.weight"] = (s.experts, s.dim)
            for w in ("w1", "w2", "w3"):
                shapes[f"{p}feed_forward.{w}"] = (s.experts * s.ffn, s.dim)
        else:
            shapes[f"{p}feed_forward.w1.weight"] = (s.ffn, s.dim)
            shapes[f"{p}feed_forward.w2.weight"] = (s.dim, s.ffn)
            shapes[f"{p}feed_forward.w3.weight"] = (s.ffn, s.dim)
    return shapes


def clip_keys(s: Sizes) -> dict[str, tuple]:
    w, text_width = s.clip_width, 32
    p = "clip.visual."
    shapes = {
        f"{p}conv1.weight": (w, 3, 14, 14),
        f"{p}class_embedding": (w,),
        f"{p}positional_embedding": (257, w),
        f"{p}ln_pre.weight": (w,), f"{p}ln_pre.bias": (w,),
        f"{p}ln_post.weight": (w,), f"{p}ln_post.bias": (w,),
        f"{p}proj": (w, text_width),
        # Text-side leftovers of open_clip's CLIP (its text transformer is deleted).
        "clip.token_embedding.weight": (100, text_width),
        "clip.positional_embedding": (77, text_width),
        "clip.ln_final.weight": (text_width,), "clip.ln_final.bias": (text_width,),
        "clip.text_projection": (text_width, text_width),
        "clip.logit_scale": (),
    }
    for j in range(s.clip_layers):
        b = f"{p}transformer.resblocks.{j}."
        shapes.update({
            f"{b}ln_1.weight": (w,), f"{b}ln_1.bias": (w,),
            f"{b}attn.in_proj_weight": (3 * w, w), f"{b}attn.in_proj_bias": (3 * w,),
            f"{b}attn.out_proj.weight": (w, w), f"{b}attn.out_proj.bias": (w,),
            f"{b}ln_2.weight": (w,), f"{b}ln_2.bias": (w,),
            f"{b}mlp.c_fc.weight": (4 * w, w), f"{b}mlp.c_fc.bias": (4 * w,),
            f"{b}mlp.c_proj.weight": (w, 4 * w), f"{b}mlp.c_proj.bias": (w,),
        })
    return shapes


def convnext_keys(s: Sizes) -> dict[str, tuple]:
    p = "openclip_convnext_xxl."
    widths = s.convnext_widths
    shapes = {f"{p}stem.0.weight": (widths[0], 3, 4, 4), f"{p}stem.0.bias": (widths[0],),
              f"{p}stem.1.weight": (widths[0],), f"{p}stem.1.bias": (widths[0],)}
    for stage, (c, depth) in enumerate(zip(widths, s.convnext_depths)):
        if stage:
            d = f"{p}stages.{stage}.downsample."
            shapes.update({f"{d}0.weight": (widths[stage - 1],), f"{d}0.bias": (widths[stage - 1],),
                           f"{d}1.weight": (c, widths[stage - 1], 2, 2), f"{d}1.bias": (c,)})
        for block in range(depth):
            b = f"{p}stages.{stage}.blocks.{block}."
            shapes.update({
                f"{b}gamma": (c,), f"{b}conv_dw.weight": (c, 1, 7, 7), f"{b}conv_dw.bias": (c,),
                f"{b}norm.weight": (c,), f"{b}norm.bias": (c,),
                f"{b}mlp.fc1.weight": (4 * c, c), f"{b}mlp.fc1.bias": (4 * c,),
                f"{b}mlp.fc2.weight": (c, 4 * c), f"{b}mlp.fc2.bias": (c,),
            })
    shapes.update({f"{p}head.norm.weight": (widths[-1],), f"{p}head.norm.bias": (widths[-1],)})
    return shapes


def dinov2_keys(s: Sizes) -> dict[str, tuple]:
    p, w = "dinov2_vitg14.", s.dinov2_width
    hidden = (int(w * 4 * 2 / 3) + 7) // 8 * 8  # DINOv2's fused SwiGLU size for mlp_ratio 4
    shapes = {f"{p}cls_token": (1, 1, w), f"{p}pos_embed": (1, 1370, w), f"{p}mask_token": (1, w),
              f"{p}patch_embed.proj.weight": (w, 3, 14, 14), f"{p}patch_embed.proj.bias": (w,),
              f"{p}norm.weight": (w,), f"{p}norm.bias": (w,)}
    for j in range(s.dinov2_layers):
        b = f"{p}blocks.{j}."
        shapes.update({
            f"{b}norm1.weight": (w,), f"{b}norm1.bias": (w,),
            f"{b}attn.qkv.weight": (3 * w, w), f"{b}attn.qkv.bias": (3 * w,),
            f"{b}attn.proj.weight": (w, w), f"{b}attn.proj.bias": (w,),
            f"{b}ls1.gamma": (w,), f"{b}norm2.weight": (w,), f"{b}norm2.bias": (w,),
            f"{b}mlp.w12.weight": (2 * hidden, w), f"{b}mlp.w12.bias": (2 * hidden,),
            f"{b}mlp.w3.weight": (w, hidden), f"{b}mlp.w3.bias": (w,),
            f"{b}ls2.gamma": (w,),
        })
    return shapes


def qformer_keys(s: Sizes) -> dict[str, tuple]:
    v, q = "qformer.vision_model.", "qformer.qformer."
    vw, qw = s.blip_width, s.qformer_width
    shapes = {
        "qformer.query_tokens": (1, s.queries, qw),
        f"{v}embeddings.class_embedding": (1, 1, vw),
        f"{v}embeddings.patch_embedding.weight": (vw, 3, 14, 14), f"{v}embeddings.patch_embedding.bias": (vw,),
        f"{v}embeddings.position_embedding": (1, 257, vw),
        f"{v}post_layernorm.weight": (vw,), f"{v}post_layernorm.bias": (vw,),
        f"{q}layernorm.weight": (qw,), f"{q}layernorm.bias": (qw,),
    }
    for j in range(s.blip_layers):
        b = f"{v}encoder.layers.{j}."
        shapes.update({
            f"{b}self_attn.qkv.weight": (3 * vw, vw), f"{b}self_attn.q_bias": (vw,), f"{b}self_attn.v_bias": (vw,),
            f"{b}self_attn.projection.weight": (vw, vw), f"{b}self_attn.projection.bias": (vw,),
            f"{b}layer_norm1.weight": (vw,), f"{b}layer_norm1.bias": (vw,),
            f"{b}mlp.fc1.weight": (s.blip_ffn, vw), f"{b}mlp.fc1.bias": (s.blip_ffn,),
            f"{b}mlp.fc2.weight": (vw, s.blip_ffn), f"{b}mlp.fc2.bias": (vw,),
            f"{b}layer_norm2.weight": (vw,), f"{b}layer_norm2.bias": (vw,),
        })
    for j in range(s.qformer_layers):
        b = f"{q}encoder.layer.{j}."
        attentions = [("attention", qw)] + ([("crossattention", vw)] if j % 2 == 0 else [])
        for name, key_width in attentions:
            for proj, width in (("query", qw), ("key", key_width), ("value", key_width)):
                shapes[f"{b}{name}.attention.{proj}.weight"] = (qw, width)
                shapes[f"{b}{name}.attention.{proj}.bias"] = (qw,)
            shapes.update({f"{b}{name}.output.dense.weight": (qw, qw), f"{b}{name}.output.dense.bias": (qw,),
                           f"{b}{name}.output.LayerNorm.weight": (qw,), f"{b}{name}.output.LayerNorm.bias": (qw,)})
        for branch in ("", "_query"):  # "" is the text branch, unused by the query tokens
            shapes.update({
                f"{b}intermediate{branch}.dense.weight": (s.qformer_ffn, qw),
                f"{b}intermediate{branch}.dense.bias": (s.qformer_ffn,),
                f"{b}output{branch}.dense.weight": (qw, s.qformer_ffn), f"{b}output{branch}.dense.bias": (qw,),
                f"{b}output{branch}.LayerNorm.weight": (qw,), f"{b}output{branch}.LayerNorm.bias": (qw,),
            })
    return shapes


def state_shapes(llama_type: str, sizes: Sizes) -> dict[str, tuple]:
    """Merged shapes of a `llama_type` checkpoint, keys without the `llma.` prefix."""
    family, four_encoders, _ = LAYOUTS[llama_type]
    shapes = llm_keys(sizes, moe=family == "mixtral")
    features = sizes.convnext_widths[-1] + sizes.dinov2_width + (sizes.clip_width if four_encoders else 0)
    shapes.update({"start_img": (1, 1, sizes.dim), "end_img": (1, 1, sizes.dim),
                   "visual_proj.0.weight": (sizes.dim, features), "visual_proj.0.bias": (sizes.dim,),
                   "visual_proj.1.weight": (sizes.dim,), "visual_proj.1.bias": (sizes.dim,)})
    if four_encoders:
        shapes.update(clip_keys(sizes))
        shapes.update({"qformer_proj.0.weight": (sizes.dim, sizes.qformer_width), "qformer_proj.0.bias": (sizes.dim,),
                       "qformer_proj.1.weight": (sizes.dim,), "qformer_proj.1.bias": (sizes.dim,)})
        shapes.update(qformer_keys(sizes))
    shapes.update(convnext_keys(sizes))
    shapes.update(dinov2_keys(sizes))
    return shapes


def full_state_dict(llama_type: str, sizes: Sizes = Sizes(), seed: int = 0, dtype=torch.bfloat16) -> dict:
    """Merged random tensors of a `llama_type` checkpoint, keys without the `llma.` prefix."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in state_shapes(llama_type, sizes).items():
        values = torch.randn(shape, generator=generator)
        # Norm weights near 1 and everything else small keep activations finite through random layers.
        is_norm_weight = re.search(r"(norm\d?|ln_\w+|LayerNorm|layer_norm\d|stem\.1|downsample\.0)\.weight$", key)
        state[key] = (1 + 0.1 * values if is_norm_weight else 0.05 * values).to(dtype)
    return state


def split_for_model_parallel(key: str, tensor: torch.Tensor, world_size: int, experts: int) -> list[torch.Tensor]:
    """The per-rank pieces of one merged tensor under fairscale's model parallelism (spec 6.3)."""
    if re.fullmatch(r"layers\.\d+\.feed_forward\.w[123]", key):
        # Every rank holds a 1/N slice of every expert's hidden dimension.
        per_expert = tensor.reshape(experts, -1, tensor.shape[-1])
        return [part.reshape(-1, tensor.shape[-1]) for part in per_expert.chunk(world_size, dim=1)]
    if re.fullmatch(r"layers\.\d+\.(attention\.w[qkv]|feed_forward\.w[13])\.weight|output\.weight", key):
        return list(tensor.chunk(world_size, dim=0))  # column parallel
    if re.fullmatch(r"layers\.\d+\.(attention\.wo|feed_forward\.w2)\.weight|tok_embeddings\.weight", key):
        return list(tensor.chunk(world_size, dim=1))  # row parallel; the embedding is split along its hidden size
    return [tensor] * world_size


def model_args(llama_type: str, sizes: Sizes) -> dict:
    """config.json as LLaMA2-Accessory writes it (`dataclasses.asdict(ModelArgs)`, spec 6.5)."""
    family = LAYOUTS[llama_type][0]
    args = {"dim": sizes.dim, "n_layers": sizes.n_layers, "n_heads": sizes.n_heads, "n_kv_heads": sizes.n_kv_heads,
            "vocab_size": sizes.vocab, "norm_eps": 1e-05, "max_batch_size": 32, "rope_scaling": None,
            "load_pretrained_visual_encoder": False}
    if family == "mixtral":
        return {**args, "hidden_dim": sizes.ffn, "head_dim": sizes.dim // sizes.n_heads, "rope_theta": 1000000,
                "max_seq_len": 4096, "moe": {"num_experts_per_tok": 2, "num_experts": sizes.experts},
                "load_balancing_weight": 0.0}
    args.update({"multiple_of": 32, "ffn_dim_multiplier": None, "rope_theta": 10000})
    if family == "llama2":
        return {**args, "n_kv_heads": None, "max_seq_len": 2048}
    return {**args, "max_seq_len": 4096, "trainable_mode": "mm_stage2"}


def write_checkpoint(
    folder: Path, llama_type: str, world_size: int = 1, *, sizes: Sizes | None = None, seed: int = 0,
    dtype=torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """Write a random `llama_type` checkpoint split into `world_size` shards; returns its merged state dict."""
    sizes = sizes or Sizes()
    if LAYOUTS[llama_type][0] == "llama2":
        sizes = replace(sizes, n_kv_heads=None)
    state = full_state_dict(llama_type, sizes, seed, dtype)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = {key: split_for_model_parallel(key, tensor, world_size, sizes.experts) for key, tensor in state.items()}
    for rank in range(world_size):
        # clone: a saved view would carry its whole storage, i.e. the unsplit tensor.
        shard = {f"llma.{key}": parts[rank].clone() for key, parts in pieces.items()}
        torch.save({"model": shard}, folder / f"consolidated.{rank:02d}-of-{world_size:02d}.model.pth")
    (folder / "config.json").write_text(json.dumps(model_args(llama_type, sizes), indent=2))
    (folder / "meta.json").write_text(json.dumps({"llama_type": llama_type}))
    shutil.copy(FIXTURE_TOKENIZER, folder / "tokenizer.model")
    return state

