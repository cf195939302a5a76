"""Held-out accuracy of a SPHINX-X model on the synthetic evaluation tasks: `sphinx-x eval --task demo` on a
held-out file.

    python -m sphinx_x.training.demo.evaluate MODEL data/demo/heldout.parquet [--per-task N] [--json out.json]

Set-of-Mark colour and 4-character OCR: exact match of the answer; grounding: the first box of the answer has
IoU >= 0.5 with the target box (`sphinx_x.evaluation.demo_tasks`).
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ...evaluation.demo_tasks import TASKS, score
from ...evaluation.runner import evaluate as run_eval


__all__ = ["evaluate", "score"]
KEYS = {"demo_som_color": "som_color", "demo_ocr_code": "ocr_code", "demo_grounding": "grounding_rec"}


def evaluate(model_path: str, heldout: str, *, per_task: int | None = None, batch_size: int = 16,
             device: str = "cpu") -> dict:
    """Per-task accuracy (`{"som_color": {"correct": c, "total": n, "accuracy": c / n}, ...}`), generating on
    `device` ("cpu", "cuda", ...); tasks without rows in `heldout` are left out."""
    with tempfile.TemporaryDirectory() as folder:
        results = run_eval(model_path, ",".join(task.name for task in TASKS), output=Path(folder) / "results.json",
                           limit=per_task, batch_size=batch_size, data_files=heldout, device=device)
    return {KEYS[name]: {"correct": result["metrics"]["correct"], "total": result["metrics"]["total"],
                         "accuracy": result["metrics"]["correct"] / result["metrics"]["total"]}
            for name, result in results.items() if result["samples"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder or Hub id")
    parser.add_argument("heldout", help="held-out parquet from sphinx_x.training.demo.make_data")
    parser.add_argument("--per-task", type=int, help="evaluate the first N rows of each task only")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to generate (default: cuda when available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per generate call")
    args = parser.parse_args(argv)
    results = evaluate(args.model, args.heldout, per_task=args.per_task, batch_size=args.batch_size,
                       device=args.device)
    for task, counts in sorted(results.items()):
        print(f"{task:15s} {counts['correct']:4d} / {counts['total']:4d} = {100 * counts['accuracy']:.1f} %")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
