"""Scenes of flat-coloured shapes for the Set-of-Mark and grounding samples.

Shapes sit in distinct cells of a grid laid over the image, so they never overlap and two shapes in different
columns (rows) have disjoint horizontal (vertical) extents: "left of" and "above" are then clear-cut.
"""

import math
import random
from dataclasses import dataclass

import PIL.Image
import PIL.ImageDraw

from .render import BOLD_FONT, background, font, sample_size, text_width


# Named colours far apart in RGB (every pair differs by >= 70 levels in some channel) and from the light backgrounds.
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (245, 120, 190),
    "gray": (120, 120, 120),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
MIN_SHAPE_SIDE = 48  # room for a legible mark label inside the shape


@dataclass
class Region:
    """One drawn shape: `box` is its tight pixel box `[x1, y1, x2, y2]`, `center` the point inside it where a mark
    goes (the centroid for a triangle)."""

    shape: str
    color: str
    box: list[float]
    center: tuple[float, float]


def mark_center(shape: str, box: list[float]) -> tuple[float, float]:
    """`Region.center` recovered from a shape's tight box, for objects saved without it: the centroid for a triangle,
    the box centre otherwise."""
    x1, y1, x2, y2 = box
    if shape == "triangle":
        return (x1 + x2) / 2, y1 + 2 * (y2 - y1) / 3
    return (x1 + x2) / 2, (y1 + y2) / 2


def left_of(first: Region, second: Region) -> bool:
    return first.box[2] < second.box[0]


def above(first: Region, second: Region) -> bool:
    return first.box[3] < second.box[1]


def beyond(first: Region, second: Region, side: str) -> bool:
    """`first` lies entirely to the `side` ("left", "right", "top" or "bottom") of `second`."""
    return {
        "left": left_of(first, second),
        "right": left_of(second, first),
        "top": above(first, second),
        "bottom": above(second, first),
    }[side]


SIDES = ("left", "right", "top", "bottom")


def star_points(x: float, y: float, side: float) -> list[tuple[float, float]]:
    """A five-pointed star (inner radius half the outer) centred horizontally in the `side` square at `(x, y)`,
    its full height (1.81 outer radii) centred vertically."""
    radius = side / 2
    cx, cy = x + side / 2, y + (side - radius * (1 + math.cos(math.pi / 5))) / 2 + radius
    return [
        (cx + r * math.sin(k * math.pi / 5), cy - r * math.cos(k * math.pi / 5))
        for k, r in zip(range(10), [radius, radius / 2] * 5)
    ]


def draw_shape(draw: PIL.ImageDraw.ImageDraw, shape: str, color: str, x: int, y: int, side: int) -> Region:
    """Draw `shape` in the named `color`, filling the `side` square at `(x, y)`; returns its region."""
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse([x, y, x + side, y + side], fill=fill)
        return Region(shape, color, [x, y, x + side, y + side], (x + side / 2, y + side / 2))
    if shape == "square":
        draw.rectangle([x, y, x + side, y + side], fill=fill)
        return Region(shape, color, [x, y, x + side, y + side], (x + side / 2, y + side / 2))
    if shape == "triangle":
        points = [(x + side / 2, y), (x + side, y + side), (x, y + side)]
        center = (x + side / 2, y + 2 * side / 3)
    elif shape == "diamond":
        points = [(x + side / 2, y), (x + side, y + side / 2), (x + side / 2, y + side), (x, y + side / 2)]
        center = (x + side / 2, y + side / 2)
    else:
        points = star_points(x, y, side)
        center = (points[0][0], (min(p[1] for p in points) + max(p[1] for p in points)) / 2)
    draw.polygon(points, fill=fill)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return Region(shape, color, [min(xs), min(ys), max(xs), max(ys)], center)


def grid_for(width: int, height: int, cells: int) -> tuple[int, int]:
    """`(rows, cols)` of near-square cells, at least `cells` of them."""
    side = math.sqrt(width * height / cells)
    rows, cols = max(1, round(height / side)), max(1, round(width / side))
    while rows * cols < cells:
        if width / cols >= height / rows:
            cols += 1
        else:
            rows += 1
    return rows, cols


def make_scene(rng: random.Random, max_side: int, count_range: tuple[int, int] = (3, 6), twin_probability: float = 0.0):
    """An image of `max_side` or less (any layout, see `sample_size`) with non-overlapping shapes.

    Returns `(image, regions)`. The number of shapes is drawn from `count_range` and lowered until every shape can
    be at least `MIN_SHAPE_SIDE` pixels, never below 2 once above it. Colours and shapes are drawn independently, so
    repeats happen; with `twin_probability` the second shape copies the first one's colour and shape (grounding then
    needs "on the left").
    """
    width, height = size = sample_size(rng, max_side)
    count = rng.randint(*count_range)
    while True:
        rows, cols = grid_for(width, height, count + rng.randint(0, count // 2))
        cell_width, cell_height = width / cols, height / rows
        if min(cell_width, cell_height) * 0.9 >= MIN_SHAPE_SIDE or count <= 2:
            break
        count -= 1
    image = background(rng, size, tuple(rng.randint(225, 255) for _ in range(3)))
    draw = PIL.ImageDraw.Draw(image)
    looks = [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(count)]
    if count > 1 and rng.random() < twin_probability:
        looks[1] = looks[0]
    regions = []
    for cell, (shape, color) in zip(rng.sample(range(rows * cols), count), looks):
        row, col = divmod(cell, cols)
        cell_side = min(cell_width, cell_height)
        side = int(rng.uniform(min(0.92, max(0.6, MIN_SHAPE_SIDE / cell_side)), 0.92) * cell_side)
        x = int(col * cell_width + rng.uniform(0, cell_width - side))
        y = int(row * cell_height + rng.uniform(0, cell_height - side))
        regions.append(draw_shape(draw, shape, color, x, y, side))
    return image, regions


def draw_mark(image: PIL.Image.Image, region: Region, mark: int) -> None:
    """A Set-of-Mark label: the number in black on a white box with a black border, centred on the region."""
    size = max(12, min(26, int((region.box[2] - region.box[0]) * 0.28)))
    text = str(mark)
    cx, cy = region.center
    # Digits are about 0.73 em tall; PIL's "mm" anchor centres them between ascender and descender, close enough.
    half_width, half_height, pad = text_width(BOLD_FONT, size, text) / 2, 0.73 * size / 2, max(2, size // 4)
    draw = PIL.ImageDraw.Draw(image)
    draw.rectangle([cx - half_width - pad, cy - half_height - pad, cx + half_width + pad, cy + half_height + pad],
                   fill=(255, 255, 255), outline=(0, 0, 0), width=1)
    draw.text((cx, cy), text, font=font(BOLD_FONT, size), fill=(0, 0, 0), anchor="mm")
