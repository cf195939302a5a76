"""The demo model's synthetic held-out tasks (`training/demo/make_data.py`): Set-of-Mark colour, single-shape colour
and kind, counting and 4-character codes (exact match, ignoring case and surrounding spaces) and grounding (the
answer's first box has IoU >= 0.5 with the target box, both normalised the same way). Without `--data` the held-out
rows are generated exactly as `make_data` writes them (seed 0, `heldout.parquet`); `--data heldout.parquet` reads
that file."""

from ..training.demo.make_data import HELDOUT_SIZES, MAX_SIDE
from ..training.synthetic.boxes import box_iou, parse_boxes
from ..training.synthetic.dataset import build_dataset
from .data import read_local
from .task import Sample, Task, percent, rgb


def score(key: str, answer: str, reference: str) -> bool:
    """Whether one answer to a question of task `key` (a key of `make_data.HELDOUT_SIZES`) is right."""
    if key == "grounding_rec":
        predicted, expected = parse_boxes(answer), parse_boxes(reference)
        return bool(predicted and predicted[0].boxes) and box_iou(predicted[0].boxes[0], expected[0].boxes[0]) >= 0.5
    return answer.strip().lower() == reference.strip().lower()


def demo_task(name: str, key: str) -> Task:
    def load(data_files):
        if data_files is None:
            return build_dataset({key: HELDOUT_SIZES[key]}, seed=0, split="heldout", max_side=MAX_SIDE)
        return read_local(data_files).filter(lambda task: task == key, input_columns="task")

    def to_sample(row: dict) -> Sample:
        return Sample(image=rgb(row["images"][0]), question=row["question"], reference=row["answer"],
                      id=row["sample_id"])

    return Task(
        name, "accuracy", None, 24, to_sample,
        lambda answer, reference: {"answer": reference, "correct": score(key, answer, reference)},
        lambda records: {"accuracy": percent(record["correct"] for record in records),
                         "correct": sum(record["correct"] for record in records), "total": len(records)},
        load=load,
    )


# `sphinx-x eval --task demo_<key>` for every held-out task of `make_data` (grounding: `demo_grounding`).
TASK_NAMES = {key: "demo_grounding" if key == "grounding_rec" else f"demo_{key}" for key in HELDOUT_SIZES}
TASKS = [demo_task(name, key) for key, name in TASK_NAMES.items()]
