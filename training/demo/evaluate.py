"""Held-out accuracy of a SPHINX-X model on the demo's synthetic tasks and its text-only check.

    python -m sphinx_x.training.demo.evaluate [--model M] [--heldout data/demo/heldout.parquet] [--per-task N]

Without `--model`, the embedded demo model; without `--heldout`, the held-out set of `make_data` is generated in
memory (the same rows, images no training sample used). Set-of-Mark colour, single-shape colour and kind, counting
and 4-character codes: exact match of the answer; grounding: the first box of the answer has IoU >= 0.5 with the
target box; text: the answer to each of `text_chat.HELDOUT`'s 20 prompts holds one of its keywords.
"""

import argparse
import json
from collections import defaultdict

import torch
from tqdm import tqdm


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def score(task: str, prediction: str, answer: str) -> bool:
    """Whether one prediction is correct for its task."""
    from ..synthetic.boxes import box_iou, parse_boxes

    if task == "grounding_rec":
        predicted, expected = parse_boxes(prediction), parse_boxes(answer)
        return bool(predicted and predicted[0].boxes) and box_iou(predicted[0].boxes[0], expected[0].boxes[0]) >= 0.5
    return prediction.strip().lower() == answer.strip().lower()


def heldout_rows(heldout: str | None, per_task: int | None):
    """The held-out dataset: a parquet file of `make_data`, or the same rows generated now; the first `per_task`
    rows of each task with `per_task`."""
    from datasets import load_dataset

    from ..synthetic.dataset import build_dataset
    from .make_data import HELDOUT_SIZES, MAX_SIDE

    if heldout is None:
        sizes = {task: min(count, per_task or count) for task, count in HELDOUT_SIZES.items()}
        return build_dataset(sizes, split="heldout", max_side=MAX_SIDE)
    rows = load_dataset("parquet", data_files=heldout, split="train")
    if per_task:
        first_rows = defaultdict(list)
        for index, task in enumerate(rows["task"]):
            if len(first_rows[task]) < per_task:
                first_rows[task].append(index)
        rows = rows.select(sorted(sum(first_rows.values(), [])))
    return rows


@torch.inference_mode()
def evaluate(model, processor, rows, *, batch_size: int = 16) -> dict:
    """Per-task accuracy (`{"som_color": {"correct": c, "total": n, "accuracy": c / n}, ...}`) on image questions."""
    results = defaultdict(lambda: {"correct": 0, "total": 0})
    for start in tqdm(range(0, len(rows), batch_size), desc="image questions", unit="batch"):
        batch = rows[start : start + batch_size]
        conversations = [
            [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": question}]}]
            for images, question in zip(batch["images"], batch["question"])
        ]
        inputs = processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True},
        ).to(model.device)
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        predictions = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for task, prediction, answer in zip(batch["task"], predictions, batch["answer"]):
            results[task]["total"] += 1
            results[task]["correct"] += score(task, prediction, answer)
    return {task: {**counts, "accuracy": counts["correct"] / counts["total"]} for task, counts in results.items()}


def evaluate_text(model, processor, *, batch_size: int = 16) -> dict:
    """The text-only check: `{"correct", "total", "accuracy", "answers"}` on `text_chat.HELDOUT`."""
    from .text_chat import HELDOUT, chat_answers, keyword_hit

    answers = chat_answers(model, processor, [prompt for prompt, _ in HELDOUT], batch_size=batch_size,
                           desc="text prompts")
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
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="weights' dtype (default bfloat16: the fastest on CPUs with avx512_bf16 and on GPUs)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per generate call")
    args = parser.parse_args(argv)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ...demo import demo_model_path

    path = args.model or demo_model_path()
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[args.dtype]).to(args.device).eval()
    processor = AutoProcessor.from_pretrained(path)
    results = evaluate(model, processor, heldout_rows(args.heldout, args.per_task), batch_size=args.batch_size)
    if not args.no_text:
        results["text"] = evaluate_text(model, processor, batch_size=args.batch_size)
    for task, counts in sorted(results.items()):
        print(f"{task:15s} {counts['correct']:4d} / {counts['total']:4d} = {100 * counts['accuracy']:.1f} %")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
