"""SPHINX grounding boxes (spec section 9): `[x1,y1,x2,y2]` with two decimals, normalised by the padded square.

A pixel box of a `W x H` image is shifted by the offsets at which the image sits on the `max(W, H)` square and
divided by that side. Released SPHINX checkpoints centre the image on the square (`placement="center"`); SPHINX-X
places it at the top-left (`placement="top_left"`, offsets 0), where the padding gathers in whole skipped tiles.
"""

import re
from typing import NamedTuple


PLACEMENTS = ("top_left", "center")

# The demo's parser (LLaMA2-Accessory `accessory/demos/multi_turn_mm_box.py`, spec 9.2).
PHRASE_BOX = re.compile(r"<p>(.*?)</p>\s*(\[[\d.,;\s]*\])")
BRACKET = re.compile(r"\[[\d.,;\s]*\]")
DECIMAL = re.compile(r"\d+\.\d+")


class Grounding(NamedTuple):
    """One bracket group of a model answer: its `<p>phrase</p>` ('' when unnamed), 4-number boxes and 2-number
    points, each as floats in the normalised square."""

    phrase: str
    boxes: list[list[float]]
    points: list[list[float]]


def padding_offsets(width: int, height: int, placement: str = "top_left") -> tuple[int, int]:
    """`(x_offset, y_offset)` of the image on its padded square: 0 for top-left, PadToSquare's floor-centring else."""
    if placement == "top_left":
        return 0, 0
    if placement == "center":
        return (height - width) // 2 if width < height else 0, (width - height) // 2 if width > height else 0
    raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}.")


def normalize_box(box, width: int, height: int, placement: str = "top_left") -> list[float]:
    """Pixel box `[x1, y1, x2, y2]` of a `width x height` image -> unrounded floats in [0, 1] of the padded square."""
    side = max(width, height)
    x_offset, y_offset = padding_offsets(width, height, placement)
    x1, y1, x2, y2 = box
    return [min(max(value / side, 0.0), 1.0) for value in (x1 + x_offset, y1 + y_offset, x2 + x_offset, y2 + y_offset)]


def format_box(box, width: int, height: int, placement: str = "top_left") -> str:
    """Pixel box -> the SPHINX answer text, e.g. `[0.12,0.34,0.56,0.78]` (two decimals, no spaces)."""
    return "[" + ",".join(f"{value:.2f}" for value in normalize_box(box, width, height, placement)) + "]"


def box_to_pixels(box, width: int, height: int, placement: str = "top_left") -> list[float]:
    """Normalised box -> pixel box of the original image (spec 9.3: `x * max(W, H) - x_offset`)."""
    side = max(width, height)
    x_offset, y_offset = padding_offsets(width, height, placement)
    x1, y1, x2, y2 = box
    return [x1 * side - x_offset, y1 * side - y_offset, x2 * side - x_offset, y2 * side - y_offset]


def parse_group(bracket: str) -> tuple[list[list[float]], list[list[float]]]:
    """`[a,b,c,d;e,f]` -> (boxes, points). Numbers need a decimal point; integers and signs are ignored, as in the
    reference; a part with neither 4 nor 2 numbers is dropped (the reference draws nothing for it)."""
    parts = [[float(number) for number in DECIMAL.findall(part)] for part in bracket.split(";")]
    return [part for part in parts if len(part) == 4], [part for part in parts if len(part) == 2]


def parse_boxes(text: str) -> list[Grounding]:
    """Every bracket group of a model answer, with the reference demo's semantics and order: `<p>phrase</p> [...]`
    groups from the last to the first, then the remaining bare `[...]` groups, also from the last to the first."""
    named = list(PHRASE_BOX.finditer(text))
    consumed = {match.start(2) for match in named}
    groups = [Grounding(match.group(1), *parse_group(match.group(2))) for match in reversed(named)]
    bare = [match for match in BRACKET.finditer(text) if match.start() not in consumed]
    return groups + [Grounding("", *parse_group(match.group())) for match in reversed(bare)]


def box_area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def box_iou(first, second) -> float:
    """Intersection over union of two `[x1, y1, x2, y2]` boxes (any common unit); 0 when the union is empty."""
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    union = box_area(first) + box_area(second) - intersection
    return intersection / union if union > 0 else 0.0
