"""One generated example before it becomes a dataset row."""

from dataclasses import dataclass, field

import PIL.Image


@dataclass
class Sample:
    """An image with one question and its exact answer.

    `objects` lists what was drawn, each `{"text": str, "shape": str, "color": str, "mark": int, "box": [x1, y1, x2,
    y2]}` with the box in pixels of `image` ('' / 0 where a field does not apply; marks start at 1). `target_box` is
    the pixel box a grounding answer encodes (empty otherwise). `details` holds task-specific facts for evaluation
    (receipt items, table cells, the kind of question, ...). `follow_ups` are further `(question, answer)` turns on
    the same image, asked after the first (training conversations; held-out samples have none).
    """

    image: PIL.Image.Image
    task: str
    question: str
    answer: str
    objects: list[dict] = field(default_factory=list)
    target_box: list[float] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    follow_ups: list[tuple[str, str]] = field(default_factory=list)


def drawn_object(box, text: str = "", shape: str = "", color: str = "", mark: int = 0) -> dict:
    """An entry of `Sample.objects`."""
    return {"text": text, "shape": shape, "color": color, "mark": mark, "box": [float(v) for v in box]}
