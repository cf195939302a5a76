"""The demo model's held-out table: `sphinx-x eval --task demo` (image questions) and the text-only check.

    python -m sphinx_x.training.demo.evaluate [--model M] [--heldout data/demo/heldout.parquet] [--per-task N]

Without `--model`, the embedded demo model; without `--heldout`, the held-out rows of `make_data` are generated in
memory (images no training sample used). Scoring is `sphinx_x.evaluation.demo_tasks`'s; the text check asks the
20 prompts of `text_chat.HELDOUT` and looks for their keywords in the answers.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ...evaluation.demo_tasks import TASK_NAMES, score
from ...evaluation.runner import evaluate as run_eval


__all__ = ["evaluate", "evaluate_text", "score"]


def evaluate(model_path: str | None, heldout: str | None = None, *, per_task: int | None = None,
             batch_size: int = 16, dtype: str = "float32", device: str = "cpu", loaded: tuple | None = None) -> dict:
    """Per-task accuracy on the image questions (`{"som_color": {"correct": c, "total": n, "accuracy": c / n},
    ...}`), by `sphinx-x eval`; tasks without rows in `heldout` are left out. `loaded`: the `(model, processor)` of
    `model_path`, already loaded."""
    with tempfile.TemporaryDirectory() as folder:
        results = run_eval(model_path, ",".join(TASK_NAMES.values()), output=Path(folder) / "results.json",
                           limit=per_task, batch_size=batch_size, data_files=heldout, dtype=dtype, device=device,
                           loaded=loaded)
    keys = {name: key for key, name in TASK_NAMES.items()}
    return {keys[name]: {"correct": result["metrics"]["correct"], "total": result["metrics"]["total"],
                         "accuracy": result["metrics"]["correct"] / result["metrics"]["total"]}
            for name, result in results.items() if result["samples"]}


def evaluate_text(model, processor, *, batch_size: int = 20) -> dict:
    """The text-only check: `{"correct", "total", "accuracy", "answers"}` on `text_chat.HELDOUT`."""
    from .text_chat import HELDOUT, MAX_ANSWER_TOKENS, chat_answers, keyword_hit

    answers, _ = chat_answers(model, processor, [prompt for prompt, _ in HELDOUT], max_new_tokens=MAX_ANSWER_TOKENS,
                              batch_size=batch_size, desc="text prompts")
    hits = [keyword_hit(answer, keywords) for answer, (_, keywords) in zip(answers, HELDOUT)]
    return {"correct": sum(hits), "total": len(hits), "accuracy": sum(hits) / len(hits),
            "answers": [{"prompt": prompt, "answer": answer, "hit": hit}
                        for (prompt, _), answer, hit in zip(HELDOUT, answers, hits)]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or Hub id (default: the embedded demo model)")
    parser.add_argument("--heldout", help="held-out parquet of make_data (default: generate the same rows now)")
    parser.add_argument("--per-task", type=int, help="evaluate the first N rows of each task only")
    parser.add_argument("--no-text", action="store_true", help="skip the text-only check")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to generate (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights' dtype")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per generate call")
    args = parser.parse_args(argv)
    from ...cli import load_model

    loaded = load_model(args.model, args.dtype, args.device)
    results = evaluate(args.model, args.heldout, per_task=args.per_task, batch_size=args.batch_size,
                       dtype=args.dtype, device=args.device, loaded=loaded)
    if not args.no_text:
        results["text"] = evaluate_text(*loaded, batch_size=args.batch_size)
    for task, counts in results.items():
        print(f"{task:15s} {counts['correct']:4d} / {counts['total']:4d} = {100 * counts['accuracy']:.1f} %")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
