"""Referring expression comprehension: RefCOCO, RefCOCO+, RefCOCOg (spec 9.6, `metric: miou0.5`).

Prompt: `Please provide the bounding box coordinate of the region this sentence describes: {expression}.` (30 new
tokens). The answer's box, normalised by the padded square, is mapped to pixels of the original image the way the
model placed the image on that square (`box_to_pixels`: centred for released SPHINX checkpoints, top-left for
SPHINX-X with skip tokens, read from the model's processor); it is right when its IoU with the annotated box is at
least 0.5.
"""

from ..training.synthetic.boxes import box_iou, box_to_pixels
from .data import read_rows
from .task import Sample, Task, percent, rgb


REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}."


def parse_rec_box(answer: str) -> list[float]:
    """The box of a REC answer as the reference evaluation reads it (`accessory/eval_mm/evaluate.py`): the text
    inside the first `[...]` (or before the first `]`), split on `,`, must be exactly 4 numbers, else
    `[0, 0, 0, 0]`. Unlike the demo's parser (`parse_boxes`), integers count. Evaluation reads boxes here only, so
    this is the one place to switch to `SphinxXProcessor.post_process_grounding` once it exists."""
    end = answer.find("]")
    text = answer[:end] if end >= 0 else answer
    text = text[text.find("[") + 1 :]
    try:
        box = [float(part) for part in text.split(",")]
    except ValueError:
        return [0.0, 0.0, 0.0, 0.0]
    return box if len(box) == 4 else [0.0, 0.0, 0.0, 0.0]


def explode_expressions(rows):
    """The Hub datasets hold one row per annotated box with a list of expressions in `answer`; each expression is
    one question."""
    def explode(batch):
        columns = [name for name in batch if name != "answer"]
        out = {name: [] for name in [*columns, "answer"]}
        for index, expressions in enumerate(batch["answer"]):
            for expression in expressions if isinstance(expressions, list) else [expressions]:
                for name in columns:
                    out[name].append(batch[name][index])
                out["answer"].append(expression)
        return out

    return rows.map(explode, batched=True, batch_size=64)


def rec_sample(row: dict) -> Sample:
    image = rgb(row["image"])
    x, y, width, height = row["bbox"]  # COCO layout, pixels
    return Sample(image=image, question=REC_PROMPT.format(row["answer"]),
                  reference={"box": [x, y, x + width, y + height], "width": image.width, "height": image.height,
                             "placement": None})


def score_rec(answer: str, reference: dict) -> dict:
    """`reference["placement"]` is the model's ("center" or "top_left"), filled in by the runner."""
    predicted = box_to_pixels(parse_rec_box(answer), reference["width"], reference["height"], reference["placement"])
    iou = box_iou(predicted, reference["box"])
    return {"box": [round(value, 2) for value in predicted], "iou": iou, "correct": iou >= 0.5}


def rec_metrics(records: list[dict]) -> dict:
    return {"accuracy@0.5": percent(record["correct"] for record in records),
            "mean_iou": percent(record["iou"] for record in records)}


def rec_task(name: str, path: str, split: str) -> Task:
    dataset = (path, None, split)
    return Task(name, "accuracy@0.5", dataset, 30, rec_sample, score_rec, rec_metrics,
                load=lambda data_files: explode_expressions(read_rows(dataset, data_files)))


TASKS = [
    *(rec_task(f"refcoco_{split}", "lmms-lab-encoder/RefCOCO", split) for split in ("val", "testA", "testB")),
    *(rec_task(f"refcoco+_{split}", "lmms-lab-encoder/RefCOCOplus", split) for split in ("val", "testA", "testB")),
    *(rec_task(f"refcocog_{split}", "lmms-lab-encoder/RefCOCOg", split) for split in ("val", "test")),
]
