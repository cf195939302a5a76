"""`convert_accessory` on tiny random checkpoints of all six released layouts (`accessory_factory`), at model-parallel
sizes 1 and 2: merged tensors, image positions, Mixtral experts, reproducibility, remote code, bad input."""

import hashlib
import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor

from sphinx_x import SphinxXForConditionalGeneration
from sphinx_x.conversion.accessory import (
    RELEASED_LAYOUTS,
    ConversionError,
    conversion_rules,
    convert_accessory,
    convert_convnext,
    dinov2_position_table,
    plan_weights,
    sphinx_config,
)
from sphinx_x.conversion.shards import AccessoryShards
from sphinx_x.presets import preset_config

from accessory_factory import (
    LAYOUTS,
    RELEASED_SIZES,
    Sizes,
    model_args,
    state_shapes,
    write_checkpoint,
)
from remote_code import run_without_sphinx_x


SIZES = Sizes()
# The tiny BLIP-2 vision tower is narrower than the bundled one, so its head count is given (real ones need none).
OPTIONS = {"qformer_vision_num_heads": 4, "max_shard_size": "1MB"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(llama_type, world_size) -> (source folder, converted folder); and llama_type -> merged original tensors."""
    root = tmp_path_factory.mktemp("accessory")
    folders, originals = {}, {}
    for llama_type in LAYOUTS:
        for world_size in (1, 2):
            src = root / f"{llama_type}-mp{world_size}"
            originals[llama_type] = write_checkpoint(src, llama_type, world_size)
            folders[llama_type, world_size] = (src, convert_accessory(src, root / f"{src.name}-hf", **OPTIONS))
    return folders, originals


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as file:
            weights.update({key: file.get_tensor(key) for key in file.keys()})
    return weights


def rotate_half_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Within each head, rotate-half row `c * hd/2 + i` is the interleaved row `2i + c` (spec 7.2)."""
    head_dim = weight.shape[0] // n_heads
    order = [head * head_dim + 2 * i + c for head in range(n_heads) for c in (0, 1) for i in range(head_dim // 2)]
    return weight[order]


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def synthetic_image() -> PIL.Image.Image:
    ramp = np.linspace(0, 255, 500, dtype=np.float32)
    pixels = np.stack([np.tile(ramp, (300, 1)), np.tile(ramp[::-1], (300, 1)), np.full((300, 500), 60.0)], axis=-1)
    return PIL.Image.fromarray(pixels.astype(np.uint8))


def chat_inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image", "image": synthetic_image()},
                                             {"type": "text", "text": "What is this?"}]}]
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.mark.parametrize("llama_type", LAYOUTS)
def test_merged_tensors_match_the_unsplit_originals(checkpoints, llama_type):
    folders, originals = checkpoints
    original = {key: tensor.float() for key, tensor in originals[llama_type].items()}
    weights = read_weights(folders[llama_type, 2][1])
    family, four_encoders, _ = LAYOUTS[llama_type]
    kv_heads = SIZES.n_heads if family == "llama2" else SIZES.n_kv_heads
    lm, layer = "model.language_model.", "model.language_model.layers.1."

    expected = {
        f"{lm}embed_tokens.weight": original["tok_embeddings.weight"],
        "lm_head.weight": original["output.weight"],
        f"{lm}norm.weight": original["norm.weight"],
        f"{layer}self_attn.q_proj.weight": rotate_half_rows(original["layers.1.attention.wq.weight"], SIZES.n_heads),
        f"{layer}self_attn.k_proj.weight": rotate_half_rows(original["layers.1.attention.wk.weight"], kv_heads),
        f"{layer}self_attn.v_proj.weight": original["layers.1.attention.wv.weight"],
        f"{layer}self_attn.o_proj.weight": original["layers.1.attention.wo.weight"],
        f"{layer}input_layernorm.weight": original["layers.1.attention_norm.weight"],
        f"{layer}post_attention_layernorm.weight": original["layers.1.ffn_norm.weight"],
        "model.image_tags.start": original["start_img"].flatten(),
        "model.image_tags.end": original["end_img"].flatten(),
        "model.visual_projector.linear.weight": original["visual_proj.0.weight"],
        "model.visual_projector.norm.bias": original["visual_proj.1.bias"],
        "model.convnext.model.embeddings.patch_embeddings.weight": original["openclip_convnext_xxl.stem.0.weight"],
        "model.convnext.model.encoder.stages.2.downsampling_layer.1.weight":
            original["openclip_convnext_xxl.stages.2.downsample.1.weight"],
        "model.convnext.model.encoder.stages.2.layers.1.layer_scale_parameter":
            original["openclip_convnext_xxl.stages.2.blocks.1.gamma"],
        "model.convnext.model.layernorm.weight": original["openclip_convnext_xxl.head.norm.weight"],
        "model.dinov2.model.embeddings.position_embeddings":
            dinov2_position_table(originals[llama_type]["dinov2_vitg14.pos_embed"], 16).float(),
        "model.dinov2.model.encoder.layer.1.attention.k_proj.weight":
            original["dinov2_vitg14.blocks.1.attn.qkv.weight"].chunk(3)[1],
        "model.dinov2.model.encoder.layer.1.mlp.up_proj.bias":
            original["dinov2_vitg14.blocks.1.mlp.w12.bias"].chunk(2)[1],
        "model.dinov2.model.encoder.layer.1.layer_scale2.lambda1": original["dinov2_vitg14.blocks.1.ls2.gamma"],
    }
    if family == "mixtral":
        w1, w2, w3 = (original[f"layers.1.feed_forward.{w}"].reshape(SIZES.experts, SIZES.ffn, SIZES.dim)
                      for w in ("w1", "w2", "w3"))
        expected[f"{layer}mlp.gate.weight"] = original["layers.1.feed_forward.gate.weight"]
        expected[f"{layer}mlp.experts.gate_up_proj"] = torch.cat([w1, w3], dim=1)
        expected[f"{layer}mlp.experts.down_proj"] = w2.transpose(1, 2)
    else:
        expected[f"{layer}mlp.gate_proj.weight"] = original["layers.1.feed_forward.w1.weight"]
        expected[f"{layer}mlp.up_proj.weight"] = original["layers.1.feed_forward.w3.weight"]
        expected[f"{layer}mlp.down_proj.weight"] = original["layers.1.feed_forward.w2.weight"]
    if four_encoders:
        clip, blip = "clip.visual.transformer.resblocks.1.attn.", "qformer.vision_model.encoder.layers.1.self_attn."
        q, k, v = original[f"{clip}in_proj_weight"].chunk(3)
        expected.update({
            "model.clip.model.encoder.layers.1.self_attn.q_proj.weight": q,
            "model.clip.model.encoder.layers.1.self_attn.k_proj.weight": k,
            "model.clip.model.encoder.layers.1.self_attn.v_proj.weight": v,
            "model.clip.model.encoder.layers.1.self_attn.v_proj.bias": original[f"{clip}in_proj_bias"].chunk(3)[2],
            "model.clip.model.pre_layrnorm.weight": original["clip.visual.ln_pre.weight"],
            "model.clip.model.embeddings.position_embedding.weight": original["clip.visual.positional_embedding"],
            "model.clip.model.post_layernorm.bias": original["clip.visual.ln_post.bias"],
            "model.qformer.query_tokens": original["qformer.query_tokens"],
            "model.qformer.vision_model.encoder.layers.1.self_attn.qkv.bias": torch.cat(
                [original[f"{blip}q_bias"], torch.zeros(SIZES.blip_width), original[f"{blip}v_bias"]]
            ),
            "model.qformer.qformer.encoder.layer.0.crossattention.attention.key.weight":
                original["qformer.qformer.encoder.layer.0.crossattention.attention.key.weight"],
            "model.qformer.qformer.encoder.layer.1.output_query.LayerNorm.weight":
                original["qformer.qformer.encoder.layer.1.output_query.LayerNorm.weight"],
            "model.qformer_projector.linear.weight": original["qformer_proj.0.weight"],
        })
    for key, tensor in expected.items():
        assert weights[key].dtype == torch.float32
        assert torch.equal(weights[key], tensor), key
    # The text-side CLIP leftovers, CLIP's projection and the Q-Former's text branch are not carried over.
    assert not [k for k in weights if "text" in k or k.endswith("clip.model.proj") or ".intermediate." in k]


def test_convert_convnext_keeps_its_public_signature(checkpoints):
    folders, originals = checkpoints
    converted = convert_convnext(originals["llama_ens_light"], "openclip_convnext_xxl.")
    weights = read_weights(folders["llama_ens_light", 1][1])
    assert converted and all(torch.equal(tensor.float(), weights[key]) for key, tensor in converted.items())


class MetaShards:
    """The merged shapes of a checkpoint without any data: what the planning reads from `AccessoryShards`."""

    def __init__(self, shapes: dict):
        self.shapes = {key: torch.Size(shape) for key, shape in shapes.items()}

    def keys(self) -> list[str]:
        return list(self.shapes)

    def meta(self, key: str) -> torch.Tensor:
        return torch.empty(self.shapes[key], dtype=torch.bfloat16, device="meta")


def without_versions(config: dict) -> dict:
    return {k: without_versions(v) if isinstance(v, dict) else v for k, v in config.items()
            if k not in ("transformers_version", "dtype")}


@pytest.mark.parametrize("llama_type", LAYOUTS)
def test_released_sizes_infer_the_preset_config_and_plan_every_weight(llama_type):
    """The shapes of the real checkpoints (spec 5) give exactly the released presets, with no option, and every
    weight of the full-size model is planned (on the meta device: nothing is allocated)."""
    sizes = RELEASED_SIZES[LAYOUTS[llama_type][0]]
    shards = MetaShards(state_shapes(llama_type, sizes))
    config = sphinx_config(llama_type, model_args(llama_type, sizes), shards.shapes)
    assert without_versions(config.to_dict()) == without_versions(preset_config(RELEASED_LAYOUTS[llama_type]).to_dict())
    with torch.device("meta"):
        model = SphinxXForConditionalGeneration(config)
    planned = plan_weights(conversion_rules(config, shards.keys()), shards, model.state_dict(), torch.bfloat16)
    assert planned.keys() == model.state_dict().keys()


@pytest.mark.parametrize("llama_type", LAYOUTS)
def test_model_parallel_sizes_give_identical_folders(checkpoints, llama_type):
    folders, _ = checkpoints
    single, double = file_digests(folders[llama_type, 1][1]), file_digests(folders[llama_type, 2][1])
    assert single == double
    # Several weight files and their index (max_shard_size 1MB), byte for byte the same.
    assert "model.safetensors.index.json" in single and sum(name.endswith(".safetensors") for name in single) > 1


@pytest.mark.parametrize("llama_type", LAYOUTS)
def test_forward_pass_fills_the_reference_number_of_image_positions(checkpoints, llama_type):
    folder = checkpoints[0][llama_type, 2][1]
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    assert config["view_source"] == ("base_views" if llama_type in ("llama_ens", "llama_ens5") else "canvas")
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    inputs = chat_inputs(AutoProcessor.from_pretrained(folder))
    positions = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert positions == LAYOUTS[llama_type][2]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], SIZES.vocab)
    assert torch.isfinite(logits).all()


def test_moe_layer_equals_the_reference_computation(checkpoints):
    """The converted sparse-MoE block computes the reference's top-2 mixture from the original tensors (spec 4.4)."""
    folders, originals = checkpoints
    model = AutoModelForImageTextToText.from_pretrained(folders["mixtral_sparse_ens", 2][1]).eval()
    original = {key: tensor.float() for key, tensor in originals["mixtral_sparse_ens"].items()}
    x = torch.randn(12, SIZES.dim, generator=torch.Generator().manual_seed(1))

    gate = original["layers.0.feed_forward.gate.weight"]
    w1, w2, w3 = (original[f"layers.0.feed_forward.{w}"].reshape(SIZES.experts, SIZES.ffn, SIZES.dim)
                  for w in ("w1", "w2", "w3"))
    probs = torch.softmax((x @ gate.T).float(), dim=-1)
    top_weights, top_experts = probs.topk(2, dim=-1)
    top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
    expected = torch.zeros_like(x)
    for token in range(x.shape[0]):
        for weight, e in zip(top_weights[token], top_experts[token]):
            hidden = F.silu(x[token] @ w1[e].T) * (x[token] @ w3[e].T)
            expected[token] += weight * (hidden @ w2[e])  # the reference's W2_e is [F, dim], used untransposed
    with torch.no_grad():
        actual = model.model.language_model.layers[0].mlp(x[None])[0]
    assert torch.allclose(actual, expected, atol=1e-6, rtol=1e-5)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import torch

    from transformers import AutoModel, AutoModelForImageTextToText

    folder, inputs_path, out_path = sys.argv[1:]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert "sphinx_x" not in sys.modules
    with torch.no_grad():
        logits = model(**torch.load(inputs_path, weights_only=True)).logits
    torch.save({"logits": logits, "module": type(model).__module__, "base": type(base).__name__}, out_path)
    """
)


def test_moe_folder_loads_as_remote_code_in_a_clean_process(checkpoints, tmp_path):
    folder = checkpoints[0]["mixtral_sparse_ens", 2][1]
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    inputs = dict(chat_inputs(AutoProcessor.from_pretrained(folder)))
    torch.save(inputs, tmp_path / "inputs.pt")
    run_without_sphinx_x(REMOTE_SCRIPT, folder, tmp_path / "inputs.pt", tmp_path / "out.pt", cwd=tmp_path)
    remote = torch.load(tmp_path / "out.pt", weights_only=True)
    assert remote["module"].startswith("transformers_modules") and remote["base"] == "SphinxXModel"
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.allclose(remote["logits"], logits, atol=1e-5)


def test_bfloat16_output_verified_and_in_one_file(checkpoints, tmp_path):
    src = checkpoints[0]["llama_ens_light", 2][0]
    dst = convert_accessory(src, tmp_path / "bf16", dtype="bfloat16", verify=True)
    assert [p.name for p in dst.glob("*.safetensors")] == ["model.safetensors"]
    with safe_open(dst / "model.safetensors", "pt") as file:
        assert {file.get_slice(key).get_dtype() for key in file.keys()} == {"BF16"}
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    assert [p.name for p in tmp_path.iterdir()] == ["bf16"]  # no temporary folder left


@pytest.mark.parametrize(
    "pretrained_flag, override, expected",
    [(False, None, "gelu"), (True, None, "quick_gelu"), (False, "quick_gelu", "quick_gelu")],
)
def test_clip_activation(checkpoints, tmp_path, pretrained_flag, override, expected):
    src = tmp_path / "src"
    shutil.copytree(checkpoints[0]["llama_ens", 1][0], src)
    args = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**args, "load_pretrained_visual_encoder": pretrained_flag}))
    dst = convert_accessory(src, tmp_path / "dst", clip_activation=override, **OPTIONS)
    assert json.loads((dst / "config.json").read_text())["clip_config"]["hidden_act"] == expected


def test_shards_read_from_are_reopened_after_the_read_budget(checkpoints):
    shards = AccessoryShards(checkpoints[0]["mixtral_sparse_ens", 2][0], read_budget=1)
    shards.tensor("norm.weight")  # replicated: read from rank 0 only
    shards.release_if_over_budget()
    assert shards._states[0] is None and shards._states[1] is not None  # rank 0 unmapped, rank 1 untouched
    experts = shards.tensor("layers.0.feed_forward.w2").clone()
    shards.release_if_over_budget()
    assert shards._states == [None, None]
    assert torch.equal(shards.tensor("layers.0.feed_forward.w2"), experts)  # re-opened on demand


def break_checkpoint(src: Path, breakage: str) -> dict:
    """Damage a copy of a 2-shard checkpoint; returns extra keyword arguments for the conversion."""
    shard = src / "consolidated.01-of-02.model.pth"
    args = json.loads((src / "config.json").read_text())
    if breakage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif breakage == "corrupt":
        shard.write_bytes(b"\x00garbage" * 1000)
    elif breakage == "missing":
        shard.unlink()
    elif breakage == "mixed":
        shutil.copy(src / "consolidated.00-of-02.model.pth", src / "consolidated.00-of-01.model.pth")
    elif breakage in ("dim", "n_layers"):
        (src / "config.json").write_text(json.dumps({**args, breakage: args[breakage] * 2}))
    elif breakage == "unknown_type":
        (src / "meta.json").write_text(json.dumps({"llama_type": "llama_ens10"}))
    elif breakage == "other_layout":
        (src / "meta.json").write_text(json.dumps({"llama_type": "llama_ens5_light"}))
    elif breakage == "pickle":
        torch.save({"model": {}, "extra": Payload()}, shard)
    elif breakage == "heads":
        return {"qformer_vision_num_heads": None}
    elif breakage == "non_finite":
        for path in (src / "consolidated.00-of-02.model.pth", shard):
            checkpoint = torch.load(path, weights_only=True)
            checkpoint["model"]["llma.norm.weight"][0] = float("inf")
            torch.save(checkpoint, path)
    return {}


class Payload:
    """A custom class: `torch.load(weights_only=True)` refuses to unpickle it."""


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("truncated", "consolidated.01-of-02.model.pth: it is truncated or corrupt"),
        ("corrupt", "truncated or corrupt"),
        ("missing", "missing ['consolidated.01-of-02.model.pth']"),
        ("mixed", "mixes shards of model-parallel sizes [1, 2]"),
        ("dim", "config.json says dim=128"),
        ("n_layers", "config.json says n_layers=4 but the shards hold 2 layers"),
        ("unknown_type", "llama_type 'llama_ens10' (meta.json) is not supported"),
        ("other_layout", "check that meta.json's llama_type belongs to these shards"),
        ("pickle", "weights_only=True refuses (unsupported global test_convert_accessory.Payload)"),
        ("heads", "--qformer-vision-num-heads"),
        ("non_finite", "model.language_model.norm.weight holds 1 NaN or infinite values (from the source checkpoint)"),
    ],
)
def test_bad_input_raises_a_clear_error_and_leaves_dst_alone(checkpoints, tmp_path, breakage, message):
    src = tmp_path / "src"
    shutil.copytree(checkpoints[0]["mixtral_sparse_ens", 2][0], src)
    options = {**OPTIONS, **break_checkpoint(src, breakage)}
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("previous conversion")
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert_accessory(src, dst, overwrite=True, **options)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temporary folder left
