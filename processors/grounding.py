"""SPHINX grounding text (spec section 9): boxes `[x1,y1,x2,y2]` and points `[x,y]` in [0, 1] of the padded image.

A box is written with two decimals and no spaces, e.g. `[0.26,0.23,0.52,0.82]`; several boxes or points of one phrase
share a bracket, separated by `;`; a phrase is tagged `<p>phrase</p> [box]`. Coordinates are normalised by the
padded frame the image processor lays on the canvas: for the square canvas of every released checkpoint that is the
`max(W, H)` square. Released SPHINX checkpoints centre the image on it (`placement="center"`, PadToSquare's offsets);
SPHINX-X places it at the top-left (`placement="top_left"`, offsets 0), where the padding gathers in whole skipped
tiles. The training data (`format_box`) and the answers (`parse_boxes`, `ground_text`) go through these functions
only, so they cannot disagree about a box.
"""

import re
from typing import NamedTuple

import numpy as np

from .image_processing_sphinx_x import padded_frame


PLACEMENTS = ("top_left", "center")

# The demo's parser (LLaMA2-Accessory `accessory/demos/multi_turn_mm_box.py`, spec 9.2).
PHRASE_BOX = re.compile(r"<p>(.*?)</p>\s*(\[[\d.,;\s]*\])")
BRACKET = re.compile(r"\[[\d.,;\s]*\]")
DECIMAL = re.compile(r"\d+\.\d+")
PHRASE_TAG = re.compile(r"</?p>")


class Grounding(NamedTuple):
    """One bracket group of a model answer: its `<p>phrase</p>` ('' when unnamed), 4-number boxes and 2-number
    points, each as floats in the normalised frame."""

    phrase: str
    boxes: list[list[float]]
    points: list[list[float]]


def image_frame(
    width: int, height: int, placement: str = "top_left", canvas: tuple[int, int] = (1, 1)
) -> tuple[int, int, int, int]:
    """`(frame_width, frame_height, x_offset, y_offset)`: the padded frame of a `width x height` image for a canvas of
    aspect `canvas` (`(height, width)`; only the ratio counts) and where the image sits on it."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}.")
    frame_width, frame_height = padded_frame(width, height, *canvas)
    if placement == "top_left":
        return frame_width, frame_height, 0, 0
    return frame_width, frame_height, (frame_width - width) // 2, (frame_height - height) // 2


def normalize_box(box, width: int, height: int, placement: str = "top_left", canvas=(1, 1)) -> list[float]:
    """Pixel box `[x1, y1, x2, y2]` (or point `[x, y]`) of a `width x height` image -> unrounded floats in [0, 1]
    of the padded frame."""
    frame_width, frame_height, x_offset, y_offset = image_frame(width, height, placement, canvas)
    scales = [(x_offset, frame_width), (y_offset, frame_height)]
    return [
        min(max((value + scales[index % 2][0]) / scales[index % 2][1], 0.0), 1.0) for index, value in enumerate(box)
    ]


def format_box(box, width: int, height: int, placement: str = "top_left", canvas=(1, 1), phrase: str | None = None):
    """Pixel box(es) -> the SPHINX answer text, e.g. `[0.12,0.34,0.56,0.78]` (two decimals, no spaces).

    `box` is one box `[x1, y1, x2, y2]`, one point `[x, y]`, or a list of them (joined with `;` in one bracket);
    with `phrase`, the text is `<p>phrase</p> [...]`.
    """
    items = [box] if not len(box) or np.ndim(box[0]) == 0 else box  # lists, tuples, arrays or tensors
    items = [[float(value) for value in item] for item in items]
    for item in items:
        if len(item) not in (2, 4):
            raise ValueError(f"a box has 4 numbers [x1, y1, x2, y2] and a point 2 [x, y]; got {item}.")
    text = "[" + ";".join(
        ",".join(f"{value:.2f}" for value in normalize_box(item, width, height, placement, canvas)) for item in items
    ) + "]"
    return text if phrase is None else f"<p>{phrase}</p> {text}"


def box_to_pixels(box, width: int, height: int, placement: str = "top_left", canvas=(1, 1)) -> list[float]:
    """Normalised box (or point) -> pixels of the original image (spec 9.3: `x * max(W, H) - x_offset`), unclipped."""
    frame_width, frame_height, x_offset, y_offset = image_frame(width, height, placement, canvas)
    scales = [(x_offset, frame_width), (y_offset, frame_height)]
    return [value * scales[index % 2][1] - scales[index % 2][0] for index, value in enumerate(box)]


def parse_group(bracket: str) -> tuple[list[list[float]], list[list[float]]]:
    """`[a,b,c,d;e,f]` -> (boxes, points). Numbers need a decimal point; integers and signs are ignored, as in the
    reference; a part with neither 4 nor 2 numbers is dropped (the reference draws nothing for it)."""
    parts = [[float(number) for number in DECIMAL.findall(part)] for part in bracket.split(";")]
    return [part for part in parts if len(part) == 4], [part for part in parts if len(part) == 2]


def bracket_groups(text: str) -> list[tuple[int, str, str]]:
    """`(position, phrase, bracket)` of every bracket group in the reference demo's order: `<p>phrase</p> [...]`
    groups from the last to the first, then the remaining bare `[...]` groups, also last to first (phrase '')."""
    named = list(PHRASE_BOX.finditer(text))
    consumed = {match.start(2) for match in named}
    bare = [match for match in BRACKET.finditer(text) if match.start() not in consumed]
    return [(match.start(), match.group(1), match.group(2)) for match in reversed(named)] + [
        (match.start(), "", match.group()) for match in reversed(bare)
    ]


def parse_boxes(text: str) -> list[Grounding]:
    """Every bracket group of a model answer, with the reference demo's semantics and order (see `bracket_groups`)."""
    return [Grounding(phrase, *parse_group(bracket)) for _, phrase, bracket in bracket_groups(text)]


def clean_text(text: str) -> str:
    """The answer without box markup: `<p>a dog</p> [0.1,0.2,0.3,0.4] runs` -> `a dog runs` (brackets without a
    decimal number, such as `[3]`, are text)."""
    text = PHRASE_TAG.sub("", BRACKET.sub(lambda match: "" if DECIMAL.search(match.group()) else match.group(), text))
    text = re.sub(r"[ \t]{2,}", " ", text)
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", text).strip()


def ground_text(text: str, width: int, height: int, placement: str = "top_left", canvas=(1, 1)) -> dict:
    """A model answer -> `{"text": answer without markup, "entities": [...]}` for a `width x height` image.

    Each entity is `{"phrase": str, "boxes": [[x1, y1, x2, y2], ...], "points": [[x, y], ...]}` in pixels of the
    original image, in the order of the text, corners ordered and clipped to the image. Groups with no complete box
    or point (malformed or cut off) are left out; nothing in the text raises.
    """
    entities = []
    for _, phrase, bracket in sorted(bracket_groups(text), key=lambda group: group[0]):
        boxes, points = parse_group(bracket)
        boxes = [clip_box(box_to_pixels(box, width, height, placement, canvas), width, height) for box in boxes]
        points = [clip_box(box_to_pixels(point, width, height, placement, canvas), width, height) for point in points]
        if boxes or points:
            entities.append({"phrase": PHRASE_TAG.sub("", phrase).strip(), "boxes": boxes, "points": points})
    return {"text": clean_text(text), "entities": entities}


def clip_box(box: list[float], width: int, height: int) -> list[float]:
    """Order a box's corners and clip a box or point to the `width x height` image."""
    if len(box) == 4:
        box = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
    return [min(max(value, 0.0), float(width if index % 2 == 0 else height)) for index, value in enumerate(box)]


def box_area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def box_iou(first, second) -> float:
    """Intersection over union of two `[x1, y1, x2, y2]` boxes (any common unit); 0 when the union is empty."""
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    union = box_area(first) + box_area(second) - intersection
    return intersection / union if union > 0 else 0.0
