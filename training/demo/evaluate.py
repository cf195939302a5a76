"""Held-out accuracy of a SPHINX-X model on the synthetic evaluation tasks.

    python -m sphinx_x.training.demo.evaluate MODEL data/demo/heldout.parquet [--per-task N] [--json out.json]

Set-of-Mark colour and 4-character OCR: exact match of the answer; grounding: the first box of the answer has
IoU >= 0.5 with the target box.
"""

import argparse
import json
from collections import defaultdict

import torch
from datasets import load_dataset
from tqdm import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..synthetic.boxes import box_iou, parse_boxes


def score(task: str, prediction: str, answer: str) -> bool:
    """Whether one prediction is correct for its task."""
    if task == "grounding_rec":
        predicted, expected = parse_boxes(prediction), parse_boxes(answer)
        return bool(predicted and predicted[0].boxes) and box_iou(predicted[0].boxes[0], expected[0].boxes[0]) >= 0.5
    return prediction.strip().lower() == answer.strip().lower()


def evaluate(model_path: str, heldout: str, *, per_task: int | None = None, batch_size: int = 16,
             device: str = "cpu") -> dict:
    """Per-task accuracy (`{"som_color": {"correct": c, "total": n, "accuracy": c / n}, ...}`), generating on
    `device` ("cpu", "cuda", ...)."""
    model = AutoModelForImageTextToText.from_pretrained(model_path).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    rows = load_dataset("parquet", data_files=heldout, split="train")
    if per_task:
        first_rows = defaultdict(list)
        for index, task in enumerate(rows["task"]):
            if len(first_rows[task]) < per_task:
                first_rows[task].append(index)
        rows = rows.select(sorted(sum(first_rows.values(), [])))
    results = defaultdict(lambda: {"correct": 0, "total": 0})
    for start in tqdm(range(0, len(rows), batch_size), desc="evaluating"):
        batch = rows[start : start + batch_size]
        conversations = [
            [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": question}]}]
            for images, question in zip(batch["images"], batch["question"])
        ]
        inputs = processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True},
        ).to(device)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        predictions = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for task, prediction, answer in zip(batch["task"], predictions, batch["answer"]):
            results[task]["total"] += 1
            results[task]["correct"] += score(task, prediction, answer)
    return {task: {**counts, "accuracy": counts["correct"] / counts["total"]} for task, counts in results.items()}


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
