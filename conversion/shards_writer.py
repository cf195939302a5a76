"""Sharded safetensors written tensor by tensor, so that a converted checkpoint never has to fit in memory.

The layout is the one `save_pretrained` writes: `model.safetensors`, or `model-0000i-of-0000n.safetensors` plus
`model.safetensors.index.json` once the weights exceed `max_shard_size`. Headers are built from the planned shapes
before any data is computed; each tensor is written as soon as it is produced and then dropped.
"""

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from transformers.utils.hub import convert_file_size_to_int

from .common import check_finite


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def plan_files(planned: dict[str, torch.Tensor], max_shard_size: int | str) -> dict[str, list[str]]:
    """File name -> keys, filling files in the order of `planned` (so tensors can be streamed in that order).

    A tensor larger than `max_shard_size` gets a file of its own.
    """
    limit = convert_file_size_to_int(max_shard_size)
    groups, size = [[]], 0
    for key, tensor in planned.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    if len(groups) == 1:
        return {SAFE_WEIGHTS_NAME: groups[0]}
    pattern = SAFE_WEIGHTS_NAME.replace(".safetensors", "-{:05d}-of-{:05d}.safetensors")
    return {pattern.format(i + 1, len(groups)): keys for i, keys in enumerate(groups)}


def write_safetensors_file(path: Path, planned: dict[str, torch.Tensor], tensors: Iterator[tuple[str, torch.Tensor]]):
    """Write one safetensors file whose tensors, in the order of `planned`, are pulled from `tensors` one at a time.

    Args:
        planned: key -> tensor (e.g. on the meta device) with the shape and dtype to be written.
        tensors: yields `(key, tensor)` in the order of `planned`, with those shapes and dtypes, on the CPU.
    """
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, spec in planned.items():
        nbytes = spec.numel() * spec.element_size()
        header[key] = {
            "dtype": SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # like safetensors: the data starts 8-byte aligned
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header_bytes)))
        file.write(header_bytes)
        for key, spec in planned.items():
            produced_key, tensor = next(tensors)
            if produced_key != key or tensor.shape != spec.shape or tensor.dtype != spec.dtype:
                raise RuntimeError(
                    f"Expected {key} {tuple(spec.shape)} {spec.dtype}, got {produced_key} {tuple(tensor.shape)} "
                    f"{tensor.dtype}: the tensors do not follow their plan."
                )
            check_finite(key, tensor, "the source checkpoint")
            file.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
            del tensor  # free it (or unmap its source pages) before the next one is produced


def write_sharded_safetensors(
    folder: Path,
    planned: dict[str, torch.Tensor],
    tensors: Iterator[tuple[str, torch.Tensor]],
    *,
    max_shard_size: int | str = "5GB",
) -> list[str]:
    """Write the streamed `tensors` (see `write_safetensors_file`) into `folder`; returns the weight file names."""
    files = plan_files(planned, max_shard_size)
    for filename, keys in files.items():
        write_safetensors_file(folder / filename, {key: planned[key] for key in keys}, tensors)
    if next(tensors, None) is not None:
        raise RuntimeError("More tensors were produced than planned.")
    if len(files) > 1:
        total_size = sum(t.numel() * t.element_size() for t in planned.values())
        index = {
            "metadata": {"total_parameters": sum(t.numel() for t in planned.values()), "total_size": total_size},
            "weight_map": {key: filename for filename, keys in files.items() for key in keys},
        }
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return list(files)
