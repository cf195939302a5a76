"""LLaMA2-Accessory model-parallel checkpoints: find the shards, open them memory-mapped, merge tensor by tensor.

A checkpoint folder holds `consolidated.NN-of-MM.model.pth` for the ranks `NN = 00 .. MM-1`, each a `torch.save`d
`{"model": state_dict}` with keys prefixed `llma.`. The LLM is split with fairscale's tensor-parallel rules
(spec 6.3); everything else (norms, router, projectors, image tags, all vision encoders) is replicated in every shard.
"""

import pickle
import re
from pathlib import Path

import torch

from .common import ConversionError


SHARD_PATTERN = re.compile(r"consolidated\.(\d{2})-of-(\d{2})\.model\.pth")

# Column-parallel linears are split along their output rows (dim 0); row-parallel linears along their input columns
# and fairscale's ParallelEmbedding along the hidden dimension, not the vocabulary (dim 1).
COLUMN_PARALLEL = re.compile(r"^layers\.\d+\.(attention\.w[qkv]|feed_forward\.w[13])\.weight$|^output\.weight$")
ROW_PARALLEL = re.compile(r"^layers\.\d+\.(attention\.wo|feed_forward\.w2)\.weight$|^tok_embeddings\.weight$")
# Sparse-MoE expert matrices (raw parameters, no `.weight`): `[E * F, dim]`, expert-major; every rank holds a 1/N
# slice of every expert's hidden dimension, i.e. `[E * F / N, dim]`.
EXPERT_PARALLEL = re.compile(r"^(layers\.\d+\.feed_forward\.)w[123]$")


def shard_paths(src: Path) -> list[Path]:
    """The shard files of `src` in rank order; every rank of one model-parallel size must be present."""
    shards = sorted(p for p in src.iterdir() if SHARD_PATTERN.fullmatch(p.name))
    if not shards:
        hint = ""
        if any(re.fullmatch(r"consolidated\.\d{2}\.pth", p.name) for p in src.iterdir()):
            hint = " (consolidated.NN.pth files are Meta's original LLaMA format, not a SPHINX checkpoint)"
        raise ConversionError(f"No consolidated.NN-of-MM.model.pth shards in {src}{hint}.")
    sizes = {int(SHARD_PATTERN.fullmatch(p.name).group(2)) for p in shards}
    if len(sizes) != 1:
        raise ConversionError(
            f"{src} mixes shards of model-parallel sizes {sorted(sizes)}: {[p.name for p in shards]}. "
            "Keep only the files of one checkpoint."
        )
    world_size = sizes.pop()
    ranks = {int(SHARD_PATTERN.fullmatch(p.name).group(1)) for p in shards}
    if ranks != set(range(world_size)):
        missing = [f"consolidated.{r:02d}-of-{world_size:02d}.model.pth" for r in range(world_size) if r not in ranks]
        extra = sorted(r for r in ranks if r >= world_size)
        problem = f"missing {missing}" if missing else f"ranks {extra} are out of range"
        raise ConversionError(f"{src} holds {len(shards)} of {world_size} shards: {problem}. Download them all.")
    return shards


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of one shard, memory-mapped (no tensor data is read yet), keys without the `llma.` prefix."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        reason = f"unsupported global {unsupported.group(1)}" if unsupported else str(error).splitlines()[0]
        raise ConversionError(
            f"{path.name} holds Python objects besides tensors, which loading with weights_only=True refuses "
            f"({reason}). A released SPHINX shard holds only tensors: download it again, or, only if you trust its "
            "origin, load it with weights_only=False yourself and re-save `{'model': state_dict}` with plain tensors."
        ) from None
    except Exception as error:  # torch raises RuntimeError / EOFError / OSError for truncated or foreign files
        raise ConversionError(
            f"Cannot read {path.name}: it is truncated or corrupt ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}). Download it again and compare its size with the source."
        ) from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path.name} does not hold a state dict of tensors (`{{'model': state_dict}}`).")
    return {key.removeprefix("llma."): value for key, value in state.items()}


class AccessoryShards:
    """The shards of one checkpoint, memory-mapped; `tensor(key)` returns one merged full tensor.

    Every read maps the tensor's file pages into this process, where they count as resident memory until the file is
    closed. So once `read_budget` bytes were read, `release_if_over_budget` closes the shards read from; the next read
    re-opens them (only the pickled index is parsed again). Peak memory stays near `read_budget` plus the largest
    merged tensor, whatever the size of the checkpoint.

    Args:
        src: the checkpoint folder.
        read_budget: bytes read between re-openings; default a quarter of the largest shard (at least 64 MiB).
    """

    def __init__(self, src: Path, read_budget: int | None = None):
        self.paths = shard_paths(src)
        self._states = [load_shard(path) for path in self.paths]
        self.shapes, self.dtypes = self._merged_shapes(self._states)
        self.largest_shard_bytes = max(path.stat().st_size for path in self.paths)
        self.read_budget = read_budget or max(self.largest_shard_bytes // 4, 64 * 2**20)
        self._bytes_read = [0] * len(self.paths)

    @property
    def world_size(self) -> int:
        return len(self.paths)

    def keys(self) -> list[str]:
        return list(self.shapes)

    def meta(self, key: str) -> torch.Tensor:
        """A meta-device tensor with the merged shape and stored dtype of `key`: shapes without reading data."""
        return torch.empty(self.shapes[key], dtype=self.dtypes[key], device="meta")

    def tensor(self, key: str) -> torch.Tensor:
        """The full tensor of `key` merged from all ranks (a view of the mapped file when it needs no merge)."""
        # Replicated tensors are read from rank 0 only, so the other shards need not be (re-)opened for them.
        ranks = range(self.world_size) if self._is_split(key) else range(1)
        parts = [self._state(rank)[key] for rank in ranks]
        for rank, part in zip(ranks, parts):
            self._bytes_read[rank] += part.numel() * part.element_size()
        if len(parts) == 1:
            return parts[0]
        if COLUMN_PARALLEL.search(key):
            return torch.cat(parts, dim=0)
        if ROW_PARALLEL.search(key):
            return torch.cat(parts, dim=1)
        # Experts: [E * F/N, dim] per rank -> [E, F/N, dim] -> concatenated over ranks -> [E * F, dim].
        num_experts = self.shapes[self._router(key)][0]
        return torch.cat([part.view(num_experts, -1, part.shape[-1]) for part in parts], dim=1).flatten(0, 1)

    def release_if_over_budget(self) -> None:
        """Close the shards read from (unmapping their pages) once `read_budget` bytes were read since opening."""
        if sum(self._bytes_read) >= self.read_budget:
            self.close(only_read=True)

    def close(self, only_read: bool = False) -> None:
        """Close all shards, or only those read from since they were opened."""
        # Dropping a state dict unmaps its file as soon as no returned tensor refers to it any more.
        for rank, bytes_read in enumerate(self._bytes_read):
            if bytes_read or not only_read:
                self._states[rank], self._bytes_read[rank] = None, 0

    def _state(self, rank: int) -> dict[str, torch.Tensor]:
        if self._states[rank] is None:
            self._states[rank] = load_shard(self.paths[rank])
        return self._states[rank]

    @staticmethod
    def _is_split(key: str) -> bool:
        return bool(COLUMN_PARALLEL.search(key) or ROW_PARALLEL.search(key) or EXPERT_PARALLEL.search(key))

    @staticmethod
    def _router(expert_key: str) -> str:
        """Key of the router of the layer that holds the expert matrix `expert_key`."""
        return EXPERT_PARALLEL.search(expert_key).group(1) + "gate.weight"

    def _merged_shapes(self, states: list[dict]) -> tuple[dict[str, torch.Size], dict[str, torch.dtype]]:
        """Merged shapes and dtypes from the shards' metadata, after checking that the shards fit together."""
        first = states[0]
        for path, state in zip(self.paths[1:], states[1:]):
            if state.keys() != first.keys():
                missing, extra = sorted(first.keys() - state.keys()), sorted(state.keys() - first.keys())
                raise ConversionError(
                    f"{path.name} and {self.paths[0].name} hold different tensors (missing {missing[:4]}, extra "
                    f"{extra[:4]}): the shards come from different checkpoints. Download the set again."
                )
        shapes, dtypes = {}, {}
        for key, tensor in first.items():
            split = len(states) > 1 and self._is_split(key)
            for path, state in zip(self.paths[1:], states[1:]):
                if state[key].shape != tensor.shape or state[key].dtype != tensor.dtype:
                    kind = "split" if split else "replicated"
                    raise ConversionError(
                        f"{kind} tensor {key} is {tuple(tensor.shape)} {tensor.dtype} in {self.paths[0].name} but "
                        f"{tuple(state[key].shape)} {state[key].dtype} in {path.name}: the shards come from different "
                        "checkpoints. Download the set again."
                    )
            shape = list(tensor.shape)
            if split:
                shape[1 if ROW_PARALLEL.search(key) else 0] *= len(states)
            shapes[key], dtypes[key] = torch.Size(shape), tensor.dtype
        for key in shapes:
            if len(states) > 1 and EXPERT_PARALLEL.search(key):
                gate = self._router(key)
                if gate not in shapes or first[key].shape[0] % shapes[gate][0]:
                    raise ConversionError(
                        f"Expert weights {key} {tuple(first[key].shape)} per shard do not split into the experts of "
                        f"router {gate}: the checkpoint is not a SPHINX-MoE one."
                    )
        return shapes, dtypes
