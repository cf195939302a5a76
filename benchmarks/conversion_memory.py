"""Peak memory of `convert_accessory` relative to the largest input shard.

Writes a synthetic LLaMA2-Accessory checkpoint (SPHINX-Tiny-1k layout, LLM enlarged so that the model-parallel
shards are ~300 MB each, > 1 GB in all) to a temporary folder, then runs, each in a fresh child process whose peak
resident memory (`ru_maxrss`, file-backed pages of memory-mapped shards included) is read with `os.wait4`:

1. the imports alone (torch, transformers, sphinx_x): the baseline any conversion pays;
2. the streaming conversion, bf16 -> bf16 safetensors;
3. for comparison, loading every shard without mmap and merging the full state dict in memory, the least a
   non-streaming converter needs.

The ratios printed are peak / largest shard, raw and with the import baseline subtracted (target <= 1.5).

    python benchmarks/conversion_memory.py                 # mp=4, 14 layers of TinyLlama width
    python benchmarks/conversion_memory.py --world-size 2 --layers 8
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# Linux carries the parent's resident memory at fork into the child's `ru_maxrss`, so this process stays small: it
# imports neither torch nor transformers and leaves even the checkpoint writing to a child.
WRITE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from accessory_factory import Sizes, write_checkpoint
sizes = Sizes(dim=2048, n_layers=int(sys.argv[4]), n_heads=32, n_kv_heads=4, ffn=5632)
write_checkpoint(sys.argv[2], "llama_ens5_light", int(sys.argv[3]), sizes=sizes, dtype=torch.bfloat16)
"""
IMPORTS = "import torch, transformers, sphinx_x; from sphinx_x.conversion.accessory import convert_accessory"
CONVERT = IMPORTS + "; import sys; convert_accessory(sys.argv[1], sys.argv[2], dtype='bfloat16')"
MERGE_IN_MEMORY = IMPORTS + """
import sys
from pathlib import Path
from sphinx_x.conversion.shards import COLUMN_PARALLEL, ROW_PARALLEL, shard_paths
states = [torch.load(path, weights_only=True)["model"] for path in shard_paths(Path(sys.argv[1]))]
merged = {}
for key in states[0]:
    name = key.removeprefix("llma.")
    dim = 0 if COLUMN_PARALLEL.search(name) else 1 if ROW_PARALLEL.search(name) else None
    merged[key] = states[0][key] if dim is None else torch.cat([state[key] for state in states], dim=dim)
"""


def peak_rss_of(code: str, *args: str) -> tuple[int, float]:
    """Run `python -c code args` in a child process; returns its peak resident memory in bytes and its wall time."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty child cannot block on it
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)  # the rusage of this child alone
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise RuntimeError(f"child failed:\n{errors.read().decode()[-3000:]}")
    return usage.ru_maxrss * 1024, seconds  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=4, help="model-parallel shards")
    parser.add_argument("--layers", type=int, default=14, help="LLM layers of TinyLlama width (~88 MB each in bf16)")
    args = parser.parse_args()

    mb = 2**20
    root = Path(tempfile.mkdtemp(prefix="sphinx-conversion-memory-"))
    try:
        src, dst = root / "checkpoint", root / "converted"
        tests = Path(__file__).resolve().parents[1] / "tests"
        peak_rss_of(WRITE, str(tests), str(src), str(args.world_size), str(args.layers))
        shard_sizes = [path.stat().st_size for path in sorted(src.glob("consolidated.*.pth"))]
        largest = max(shard_sizes)
        total = sum(shard_sizes)
        print(f"input: {len(shard_sizes)} shards, {total / mb:.0f} MiB in all, largest {largest / mb:.0f} MiB")

        baseline, _ = peak_rss_of(IMPORTS)
        streaming, seconds = peak_rss_of(CONVERT, str(src), str(dst))
        written = sum(path.stat().st_size for path in dst.glob("*.safetensors"))
        in_memory, _ = peak_rss_of(MERGE_IN_MEMORY, str(src))

        print(f"baseline peak RSS (import torch + transformers + sphinx_x): {baseline / mb:.0f} MiB")
        rows = [("streaming convert_accessory", streaming), ("load + merge all shards in memory", in_memory)]
        for name, peak in rows:
            print(
                f"{name:36s} peak RSS {peak / mb:6.0f} MiB | / largest shard: raw {peak / largest:.2f}, "
                f"import-subtracted {(peak - baseline) / largest:.2f}"
            )
        print(f"streaming conversion: {seconds:.1f} s, wrote {written / mb:.0f} MiB of safetensors (target <= 1.5)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
