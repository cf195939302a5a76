"""InternLM2 (its own Hub format, loaded by remote code) -> the transformers Llama layout.

InternLM2 is a Llama decoder under other names, with one packed projection: `attention.wqkv` stores, for each of the
`num_key_value_heads` groups, `num_key_value_groups` query heads, then one key head, then one value head, each
`head_dim` rows. It applies RoPE rotate-half style like HF Llama, so unlike LLaMA2-Accessory weights (spec 7.2) the
query/key rows need no permutation.
"""

import re

import torch
from transformers import LlamaConfig

from .common import ConversionError


# InternLM2 name (after `model.layers.{i}.`) -> HF Llama name. `attention.wqkv` is split separately.
LAYER_RENAMES = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
TOP_LEVEL_RENAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
# The RoPE scalings InternLM2's modeling code implements; both have the same meaning in transformers.
ROPE_SCALINGS = ("linear", "dynamic")


def split_wqkv(
    wqkv: torch.Tensor, num_heads: int, num_key_value_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a packed InternLM2 `wqkv` weight into Llama's `q_proj`, `k_proj`, `v_proj` weights.

    Args:
        wqkv: `[(num_heads + 2 * num_key_value_heads) * head_dim, hidden]`, grouped per KV head as
            `[q_0 .. q_{groups-1}, k, v]` (InternLM2's `rearrange(qkv, "... (h gs d) -> ... h gs d")`).

    Returns:
        `q` `[num_heads * head_dim, hidden]` (query head `h * groups + g` is query `g` of group `h`, the order in
        which HF Llama's `repeat_kv` pairs it with KV head `h`), `k` and `v` `[num_key_value_heads * head_dim, hidden]`.
    """
    groups = num_heads // num_key_value_heads
    hidden = wqkv.shape[-1]
    packed = wqkv.reshape(num_key_value_heads, groups + 2, head_dim, hidden)
    q = packed[:, :groups].reshape(num_heads * head_dim, hidden)
    k = packed[:, groups].reshape(num_key_value_heads * head_dim, hidden)
    v = packed[:, groups + 1].reshape(num_key_value_heads * head_dim, hidden)
    return q, k, v


def llama_config_from_internlm2(config: dict) -> LlamaConfig:
    """The `LlamaConfig` computing what an InternLM2 `config.json` describes (sizes, RoPE base and scaling, norms)."""
    missing = [
        name
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if name not in config
    ]
    if missing:
        raise ConversionError(f"The InternLM2 config.json lacks {', '.join(missing)}.")
    # Released InternLM2 models have neither; supporting them would need biased q/k/v/o and tied-weight handling.
    if config.get("bias") or config.get("tie_word_embeddings"):
        raise ConversionError("InternLM2 with `bias` or `tie_word_embeddings` set is not supported.")
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads or config["hidden_size"] % heads:
        raise ConversionError(
            f"InternLM2 heads do not divide evenly: hidden {config['hidden_size']}, {heads} heads, {kv_heads} KV heads."
        )
    rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))}
    scaling = config.get("rope_scaling")
    if scaling:
        scaling_type = scaling.get("type") or scaling.get("rope_type")
        if scaling_type not in ROPE_SCALINGS:
            raise ConversionError(f"InternLM2 rope_scaling {scaling!r}: its code implements only {ROPE_SCALINGS}.")
        rope.update(rope_type=scaling_type, factor=float(scaling["factor"]))
    return LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=config["hidden_size"] // heads,
        hidden_act=config.get("hidden_act", "silu"),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_parameters=rope,
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        initializer_range=config.get("initializer_range", 0.02),
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id", 0),
    )


def internlm2_to_llama(state: dict[str, torch.Tensor], config: dict) -> tuple[dict[str, torch.Tensor], LlamaConfig]:
    """Convert an InternLM2 state dict and `config.json` into HF `LlamaForCausalLM` weights and config.

    Args:
        state: InternLM2 tensors (`model.tok_embeddings.weight`, `model.layers.{i}.attention.wqkv.weight`, ...,
            `model.norm.weight`, `output.weight`).
        config: the parsed InternLM2 `config.json`.

    Returns:
        `LlamaForCausalLM` state dict (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, ...,
        `lm_head.weight`) and its `LlamaConfig`.
    """
    llama_config = llama_config_from_internlm2(config)
    heads, kv_heads = llama_config.num_attention_heads, llama_config.num_key_value_heads
    head_dim = llama_config.head_dim
    llama_state, unknown = {}, []
    for key, tensor in state.items():
        layer = LAYER_KEY.fullmatch(key)
        if key in TOP_LEVEL_RENAMES:
            llama_state[TOP_LEVEL_RENAMES[key]] = tensor
        elif layer and layer.group(2) == "attention.wqkv.weight":
            prefix = f"model.layers.{layer.group(1)}.self_attn."
            expected_rows = (heads + 2 * kv_heads) * head_dim
            if tensor.shape[0] != expected_rows:
                raise ConversionError(
                    f"{key} has {tensor.shape[0]} rows; config.json implies {expected_rows} "
                    f"(({heads} + 2 * {kv_heads}) heads of {head_dim})."
                )
            q, k, v = split_wqkv(tensor, heads, kv_heads, head_dim)
            llama_state.update({f"{prefix}q_proj.weight": q, f"{prefix}k_proj.weight": k, f"{prefix}v_proj.weight": v})
        elif layer and layer.group(2) in LAYER_RENAMES:
            llama_state[f"model.layers.{layer.group(1)}.{LAYER_RENAMES[layer.group(2)]}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"Unexpected InternLM2 tensors: {sorted(unknown)[:8]}")
    expected = set(TOP_LEVEL_RENAMES.values())
    for layer in range(llama_config.num_hidden_layers):
        expected |= {f"model.layers.{layer}.self_attn.{p}_proj.weight" for p in "qkvo"}
        expected |= {f"model.layers.{layer}.{name}" for name in LAYER_RENAMES.values()}
    missing = expected - set(llama_state)
    if missing:
        raise ConversionError(f"The InternLM2 checkpoint lacks tensors for: {sorted(missing)[:8]}")
    return llama_state, llama_config


__all__ = ["internlm2_to_llama", "llama_config_from_internlm2", "split_wqkv"]
