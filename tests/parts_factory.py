"""Tiny random stand-ins of the public checkpoint formats that `sphinx_x.conversion.assemble` reads.

Each writer lays out files as the real publication does (names, key layouts, config fields) at toy sizes, and returns
what a test needs to check the assembled model against the source: the source model, or the raw tensors.
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    Dinov2Config,
    Dinov2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    MixtralConfig,
    MixtralForCausalLM,
)


FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "sphinx-tiny-1k" / "checkpoint" / "tokenizer.model"
VOCAB_SIZE = 512  # pieces in the fixture's SentencePiece model
CONVNEXT_DEPTHS = (1, 1, 2, 1)
CONVNEXT_WIDTHS = (8, 16, 24, 32)


def randomize_(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Replace every weight by a random one, so that a misplaced tensor changes the outputs.

    Initial values would hide mistakes: zero biases, unit norms, 1e-6 layer scales, near-uniform attention.
    1-D scales (norm weights, layer scales) become `1 + 0.1 * N(0, 1)`, other 1-D tensors `0.1 * N(0, 1)`, matrices
    `std * N(0, 1)`.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() == 1 and name.endswith(("weight", "lambda1")):
                param.copy_(1 + 0.1 * noise)
            elif param.dim() == 1:
                param.copy_(0.1 * noise)
            else:
                param.copy_(std * noise)
    return model.eval()


def write_tokenizer(folder: Path) -> None:
    """The fixture's SentencePiece model saved as an HF Llama tokenizer (`tokenizer.json`) next to `tokenizer.model`."""
    LlamaTokenizer.from_pretrained(str(FIXTURE_TOKENIZER.parent)).save_pretrained(folder)
    shutil.copy(FIXTURE_TOKENIZER, folder / "tokenizer.model")


def tiny_llama_config(**overrides) -> LlamaConfig:
    fields = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaConfig(**{**fields, **overrides})


def write_llama(folder: Path, seed: int = 0, *, legacy_bin: bool = False, **config_overrides) -> LlamaForCausalLM:
    """An HF Llama folder as TinyLlama / LLaMA-2 publish it: config.json, model.safetensors, tokenizer files.

    `legacy_bin` writes `pytorch_model.bin` as transformers < 4.32 did (older LLaMA-2 / TinyLlama checkpoints),
    RoPE `inv_freq` buffers included.
    """
    torch.manual_seed(seed)
    model = randomize_(LlamaForCausalLM(tiny_llama_config(**config_overrides)), seed=seed)
    model.save_pretrained(folder)
    if legacy_bin:
        state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
        for index in range(model.config.num_hidden_layers):
            state[f"model.layers.{index}.self_attn.rotary_emb.inv_freq"] = model.model.rotary_emb.inv_freq.clone()
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
    write_tokenizer(folder)
    return model


def write_mixtral(folder: Path, seed: int = 1) -> MixtralForCausalLM:
    """An HF Mixtral folder with sharded safetensors (per-expert `block_sparse_moe.experts.{e}.w1/w2/w3` tensors)."""
    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = randomize_(MixtralForCausalLM(config), seed=seed)
    model.save_pretrained(folder, max_shard_size="200KB")
    write_tokenizer(folder)
    return model


def pack_internlm2(llama: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The InternLM2 state dict of a Llama: q/k/v packed per KV group into `attention.wqkv`, InternLM2 names."""
    config = llama.config
    kv_heads, head_dim = config.num_key_value_heads, config.head_dim
    groups = config.num_attention_heads // kv_heads
    state = {
        "model.tok_embeddings.weight": llama.model.embed_tokens.weight,
        "model.norm.weight": llama.model.norm.weight,
        "output.weight": llama.lm_head.weight,
    }
    for index, layer in enumerate(llama.model.layers):
        attention, mlp, prefix = layer.self_attn, layer.mlp, f"model.layers.{index}."
        hidden = attention.q_proj.weight.shape[1]
        q = attention.q_proj.weight.reshape(kv_heads, groups, head_dim, hidden)
        k = attention.k_proj.weight.reshape(kv_heads, 1, head_dim, hidden)
        v = attention.v_proj.weight.reshape(kv_heads, 1, head_dim, hidden)
        state.update({
            prefix + "attention.wqkv.weight": torch.cat([q, k, v], dim=1).reshape(-1, hidden),
            prefix + "attention.wo.weight": attention.o_proj.weight,
            prefix + "feed_forward.w1.weight": mlp.gate_proj.weight,
            prefix + "feed_forward.w3.weight": mlp.up_proj.weight,
            prefix + "feed_forward.w2.weight": mlp.down_proj.weight,
            prefix + "attention_norm.weight": layer.input_layernorm.weight,
            prefix + "ffn_norm.weight": layer.post_attention_layernorm.weight,
        })
    return {key: tensor.detach().clone().contiguous() for key, tensor in state.items()}


def internlm2_config_json(llama_config: LlamaConfig) -> dict:
    """InternLM2's config.json fields (as in `internlm/internlm2-7b`) for the sizes of a Llama config."""
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "model_type": "internlm2",
        "attn_implementation": "eager",
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": llama_config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": llama_config.intermediate_size,
        "max_position_embeddings": llama_config.max_position_embeddings,
        "num_attention_heads": llama_config.num_attention_heads,
        "num_hidden_layers": llama_config.num_hidden_layers,
        "num_key_value_heads": llama_config.num_key_value_heads,
        "rms_norm_eps": llama_config.rms_norm_eps,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "rope_theta": llama_config.rope_parameters["rope_theta"],
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.2",
        "use_cache": True,
        "vocab_size": llama_config.vocab_size,
    }


def write_internlm2(folder: Path, seed: int = 2) -> LlamaForCausalLM:
    """An InternLM2 folder in its own format, packed from a tiny Llama with InternLM2's RoPE (theta 1e6, dynamic NTK
    scaling x2 over 32768 positions); returns that Llama, the model the conversion must give back.

    Weights are sharded `.bin` files with an index, tokenizer files name InternLM2's own tokenizer class.
    """
    torch.manual_seed(seed)
    llama_config = tiny_llama_config(
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}, max_position_embeddings=32768
    )
    llama = randomize_(LlamaForCausalLM(llama_config), seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    state = pack_internlm2(llama)
    first = {key: tensor for key, tensor in state.items() if not key.startswith("model.layers.1.")}
    shards = {"pytorch_model-00001-of-00002.bin": first,
              "pytorch_model-00002-of-00002.bin": {k: v for k, v in state.items() if k not in first}}
    weight_map = {}
    for name, shard in shards.items():
        torch.save(shard, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(internlm2_config_json(llama_config), indent=2))
    shutil.copy(FIXTURE_TOKENIZER, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer",
                                       "tokenization_internlm2_fast.InternLM2TokenizerFast"]},
        "tokenizer_class": "InternLM2Tokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "decode_with_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }, indent=2))
    return llama


def convnext_trunk(seed: int = 3, depths=CONVNEXT_DEPTHS, widths=CONVNEXT_WIDTHS) -> dict[str, torch.Tensor]:
    """A random timm ConvNeXt trunk (`stem.*`, `stages.{s}.downsample.*`, `stages.{s}.blocks.{b}.*`, `head.norm.*`)
    with non-trivial layer scales, norms and biases."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0):
        return std * torch.randn(shape, generator=generator)

    def norm(prefix, width):
        return {prefix + "weight": 1 + rand(width, std=0.1), prefix + "bias": rand(width, std=0.1)}

    trunk = {"stem.0.weight": rand(widths[0], 3, 4, 4, std=0.2), "stem.0.bias": rand(widths[0], std=0.1)}
    trunk.update(norm("stem.1.", widths[0]))
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        prefix = f"stages.{stage}."
        if stage > 0:
            trunk.update(norm(prefix + "downsample.0.", widths[stage - 1]))
            trunk[prefix + "downsample.1.weight"] = rand(width, widths[stage - 1], 2, 2, std=0.3)
            trunk[prefix + "downsample.1.bias"] = rand(width, std=0.1)
        for block in range(depth):
            name = f"{prefix}blocks.{block}."
            trunk.update({
                name + "gamma": 0.5 + rand(width, std=0.1),
                name + "conv_dw.weight": rand(width, 1, 7, 7, std=0.15),
                name + "conv_dw.bias": rand(width, std=0.1),
                name + "mlp.fc1.weight": rand(4 * width, width, std=width**-0.5),
                name + "mlp.fc1.bias": rand(4 * width, std=0.1),
                name + "mlp.fc2.weight": rand(width, 4 * width, std=(4 * width) ** -0.5),
                name + "mlp.fc2.bias": rand(width, std=0.1),
            })
            trunk.update(norm(name + "norm.", width))
    trunk.update(norm("head.norm.", widths[-1]))
    return trunk


def write_open_clip_convnext(folder: Path, trunk: dict[str, torch.Tensor], *, safetensors: bool) -> Path:
    """The whole CLIP as open_clip publishes `laion/CLIP-convnext_xxlarge-*`: the timm trunk under `visual.trunk.`,
    the projection head `visual.head.proj`, the text tower, and `open_clip_config.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    embed, text_width = 12, 16
    clip = {f"visual.trunk.{key}": tensor for key, tensor in trunk.items()}
    clip.update({
        "visual.head.proj.weight": torch.randn(embed, CONVNEXT_WIDTHS[-1]),
        "token_embedding.weight": torch.randn(49408 // 64, text_width),
        "positional_embedding": torch.randn(77, text_width),
        "transformer.resblocks.0.ln_1.weight": torch.ones(text_width),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(3 * text_width, text_width),
        "transformer.resblocks.0.mlp.c_fc.weight": torch.randn(4 * text_width, text_width),
        "ln_final.weight": torch.ones(text_width),
        "text_projection": torch.randn(text_width, embed),
        "logit_scale": torch.tensor(4.6052),
    })
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {
            "embed_dim": 1024,
            "vision_cfg": {"timm_model_name": "convnext_xxlarge", "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": "linear", "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": 256},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }, indent=2))
    if safetensors:
        path = folder / "open_clip_model.safetensors"
        save_file({key: tensor.contiguous() for key, tensor in clip.items()}, path)
    else:
        path = folder / "open_clip_pytorch_model.bin"
        torch.save(clip, path)
    return path


def write_timm_convnext(folder: Path, trunk: dict[str, torch.Tensor]) -> Path:
    """The trunk as timm publishes `timm/convnext_xxlarge.clip_laion2b_soup`: top-level keys plus `head.fc` (the CLIP
    projection) in `model.safetensors`, and timm's `config.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {**trunk, "head.fc.weight": torch.randn(12, CONVNEXT_WIDTHS[-1]), "head.fc.bias": torch.zeros(12)}
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, folder / "model.safetensors")
    timm_config = {"architecture": "convnext_xxlarge", "num_classes": 1024, "num_features": 3072,
                   "pretrained_cfg": {"tag": "clip_laion2b_soup"}}
    (folder / "config.json").write_text(json.dumps(timm_config))
    return folder / "model.safetensors"


def write_dinov2(folder: Path, seed: int = 4) -> Dinov2Model:
    """An HF Dinov2Model folder as `facebook/dinov2-giant` (SwiGLU, layer scale, 518-px 37x37 positional table),
    narrow and shallow; `save_pretrained` writes the Hub's legacy key names."""
    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        use_swiglu_ffn=True,
        image_size=518,
        patch_size=14,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
    )
    model = randomize_(Dinov2Model(config), seed=seed)
    model.save_pretrained(folder)
    return model


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_bpe_llama(folder: Path, seed: int = 6) -> LlamaForCausalLM:
    """A Llama folder as SmolLM2 publishes it: tied input and output embeddings (no `lm_head.weight` saved) and a
    byte-level BPE `tokenizer.json` with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["What is in the picture? A red circle, a blue square and a green triangle.", "The capital of France."]
    bpe.train_from_iterator(text * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = randomize_(LlamaForCausalLM(config), seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def write_plain_dinov2(folder: Path, seed: int = 7) -> Dinov2Model:
    """An HF Dinov2Model folder of a ViT-S/B/L kind (plain GELU MLP), narrow and shallow."""
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=4,
                          use_swiglu_ffn=False, image_size=518, patch_size=14, layer_norm_eps=1e-6)
    model = randomize_(Dinov2Model(config), seed=seed)
    model.save_pretrained(folder)
    return model
