"""`sphinx-x eval`: batched greedy generation over benchmark tasks, resumable, with a results table.

For each task, the answers are appended to `<output stem>-predictions/<task>.jsonl` as they are produced (one record
per dataset row: its position, the dataset's id, the question, the answer, the scoring reference); a rerun with the
same output skips the rows already there. At the end every answer is scored from that file, the scored records are
written to `<task>.scored.jsonl` beside it, and the metrics to the results JSON (merged with the tasks already in
it).
"""

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .data import read_rows
from .task import Sample, Task
from .tasks import GROUPS, resolve_tasks


def build_inputs(processor, samples: list[Sample]):
    """Model inputs for a batch of questions: the chat template's prompt ending in `### Assistant:`, then each
    sample's suffix; left-padded."""
    conversations = [
        [{"role": "user", "content": [{"type": "image"}] * (sample.image is not None)
          + [{"type": "text", "text": sample.question}]}]
        for sample in samples
    ]
    texts = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    texts = [text + sample.suffix for text, sample in zip(texts, samples)]
    images = [[sample.image] if sample.image is not None else [] for sample in samples]
    return processor(text=texts, images=images if any(images) else None, padding=True, add_special_tokens=False,
                     return_tensors="pt")


def generate_answers(model, processor, samples: list[Sample], max_new_tokens: int, **generate_kwargs) -> list[str]:
    """Answers to a batch of questions (greedy unless `generate_kwargs` sample), each cut at the reference
    terminator `###` and stripped, as the reference evaluation does."""
    inputs = build_inputs(processor, samples).to(model.device)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, **{"do_sample": False, **generate_kwargs})
    answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [answer.split("###")[0].strip() for answer in answers]


def image_placement(processor) -> str:
    """Where the model's image processor puts an image on its padded square (what a box is normalised by)."""
    return "top_left" if processor.image_processor.skip_padded_tiles else "center"


def read_predictions(path: Path, header: dict) -> dict[int, dict]:
    """Records of a predictions file by row; the file must come from the same model and task settings."""
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        return {}
    try:
        found = json.loads(lines[0])
    except json.JSONDecodeError:
        found = lines[0]
    if found != header:
        raise ValueError(f"{path} holds predictions of {found}, not of {header}; pass another --output or delete it.")
    records = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interrupted run is asked again
            continue
        records[record["row"]] = record
    return records


def run_task(model, processor, task: Task, predictions: Path, *, model_name: str, limit: int | None = None,
             batch_size: int = 8, data_files=None) -> list[dict]:
    """Answers every row of `task` not yet in `predictions`, appending as it goes; returns all rows' records."""
    rows = task.load(data_files) if task.load else read_rows(task.dataset, data_files)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    header = {"model": model_name, "task": task.name, "max_new_tokens": task.max_new_tokens,
              "data": None if data_files is None else str(data_files)}
    done = read_predictions(predictions, header)
    todo = [row for row in range(len(rows)) if row not in done]
    predictions.parent.mkdir(parents=True, exist_ok=True)
    placement = image_placement(processor)
    written = predictions.read_text() if predictions.exists() else ""
    with predictions.open("a" if written.strip() else "w") as handle, \
            tqdm(total=len(todo), desc=task.name, unit="sample") as progress:
        if not written.strip():
            handle.write(json.dumps(header) + "\n")
        elif not written.endswith("\n"):  # a line cut short by an interrupted run stays on its own
            handle.write("\n")
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            samples = [task.to_sample(rows[row]) for row in batch]
            for sample in samples:
                if isinstance(sample.reference, dict) and "placement" in sample.reference:
                    sample.reference["placement"] = placement
            answers = generate_answers(model, processor, samples, task.max_new_tokens)
            for row, sample, answer in zip(batch, samples, answers):
                done[row] = {"row": row, "id": sample.id, "question": sample.question + sample.suffix,
                             "prediction": answer, "reference": sample.reference}
                handle.write(json.dumps(done[row]) + "\n")
            handle.flush()
            progress.update(len(batch))
    return [done[row] for row in range(len(rows))]


def score_task(task: Task, records: list[dict], scored: Path) -> dict:
    """Scores the records, writes them with their scores to `scored`, returns the task's metrics."""
    results = [task.score(record["prediction"], record["reference"]) for record in records]
    with scored.open("w") as handle:
        for record, result in zip(records, results):
            handle.write(json.dumps({**record, "score": result}) + "\n")
    return task.aggregate(results)


def format_table(results: dict) -> str:
    """The results as a text table, with the published SPHINX numbers where the task has them."""
    lines = [f"{'task':<18} {'metric':<18} {'samples':>7} {'ours':>8}  paper"]
    for name, result in results.items():
        value = result["metrics"][result["metric"]]
        paper = ", ".join(f"{number:.2f} ({model})" for model, number in result["paper"].items()) or "-"
        lines.append(f"{name:<18} {result['metric']:<18} {result['samples']:>7} {value:>8.2f}  {paper}")
    return "\n".join(lines)


def evaluate(model: str | None, tasks: str, *, output: str | Path = "sphinx-x-eval/results.json",
             limit: int | None = None, batch_size: int = 8, data_files=None, dtype: str = "float32",
             device: str = "cpu", loaded: tuple | None = None) -> dict:
    """Runs `tasks` (comma-separated names or groups, see `TASKS` / `GROUPS`) on `model` (a folder or Hub id; the
    embedded demo model when None) and returns `{task: {"metric", "metrics", "samples", "paper", ...}}`. `loaded`, a
    `(model, processor)` pair already loaded from `model`, is used instead of loading it again."""
    from ..cli import load_model

    selected = resolve_tasks(tasks)
    demo = set(GROUPS["demo"])  # one held-out file holds the rows of the three demo tasks
    if data_files is not None and len(selected) > 1 and not {task.name for task in selected} <= demo:
        raise ValueError("--data gives the rows of one task; run one --task per data file.")
    output = Path(output)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}.")
    loaded, processor = loaded or load_model(model, dtype, device)
    folder = output.parent / f"{output.stem}-predictions"
    results = {}
    for task in selected:
        started = time.perf_counter()
        records = run_task(loaded, processor, task, folder / f"{task.name}.jsonl", model_name=str(model or "demo"),
                           limit=limit, batch_size=batch_size, data_files=data_files)
        metrics = score_task(task, records, folder / f"{task.name}.scored.jsonl")
        results[task.name] = {
            "metric": task.metric, "metrics": metrics,
            "samples": len(records), "paper": task.paper, "model": str(model or "demo"),
            "predictions": str(folder / f"{task.name}.scored.jsonl"),
            "seconds": round(time.perf_counter() - started, 1),
        }
    previous = json.loads(output.read_text()) if output.exists() else {}
    output.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    return results


def eval_command(args) -> None:
    results = evaluate(args.model, args.task, output=args.output, limit=args.limit, batch_size=args.batch_size,
                       data_files=args.data, dtype=args.dtype, device=args.device)
    print(format_table(results))
    print(f"Wrote {args.output}")
