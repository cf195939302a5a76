"""Drawing helpers shared by the generators: fonts, image sizes with wide and tall aspect ratios, backgrounds, text."""

import functools
import random
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont


FONT_DIR = Path(__file__).parent / "fonts"
# ASCII subsets of DejaVu (see fonts/LICENSE) ship with the package so that a fresh machine renders the same glyphs.
FONT_FILES = tuple(sorted(path.name for path in FONT_DIR.glob("*.ttf")))
BOLD_FONT = "DejaVuSans-Bold.ttf"

# Aspect ratios (width / height) per layout. With SPHINX-X's 2x2 canvas an image of ratio >= 2 (or <= 1/2) leaves a
# whole row (column) of tiles padded, so "wide" and "tall" images exercise the skip tokens; "square" ones do not.
ASPECT_RANGES = {"wide": (2.0, 4.0), "tall": (1 / 4.0, 1 / 2.0), "square": (1 / 2.0, 2.0)}
DEFAULT_LAYOUTS = {"wide": 0.35, "tall": 0.35, "square": 0.3}
MIN_SIDE = 64
# Below this longest side, receipts and tables rarely fit at a legible font size.
MIN_MAX_SIDE_DOCUMENTS = 384
# Below this one, 48-px shapes, Set-of-Mark labels and 14-px words no longer fit in wide and tall images.
MIN_MAX_SIDE = 192


@functools.lru_cache(maxsize=4096)
def font(name: str, size: int) -> PIL.ImageFont.FreeTypeFont:
    """A shipped font at `size` pixels. The basic layout engine renders the same with or without libraqm."""
    return PIL.ImageFont.truetype(str(FONT_DIR / name), size, layout_engine=PIL.ImageFont.Layout.BASIC)


def choose(rng: random.Random, weights: dict):
    """One key of `weights` drawn with probability proportional to its value."""
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def sample_aspect(rng: random.Random, layouts: dict = DEFAULT_LAYOUTS, ranges: dict = ASPECT_RANGES) -> float:
    """Width / height: a layout drawn from `layouts` (weights over the keys of `ranges`), log-uniform within its
    `(low, high)` range."""
    low, high = ranges[choose(rng, layouts)]
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def sample_size(rng: random.Random, max_side: int, layouts: dict = DEFAULT_LAYOUTS) -> tuple[int, int]:
    """`(width, height)` with an aspect ratio from `sample_aspect` and a long side in `[0.75, 1] * max_side`."""
    aspect = sample_aspect(rng, layouts)
    long_side = rng.randint(int(0.75 * max_side), max_side)
    if aspect >= 1:
        return long_side, max(MIN_SIDE, round(long_side / aspect))
    return max(MIN_SIDE, round(long_side * aspect)), long_side


def light_color(rng: random.Random) -> tuple[int, int, int]:
    """Every channel in [190, 255]: a background that any `dark_color` contrasts with."""
    return tuple(rng.randint(190, 255) for _ in range(3))


def dark_color(rng: random.Random) -> tuple[int, int, int]:
    """Every channel in [0, 80]."""
    return tuple(rng.randint(0, 80) for _ in range(3))


def text_colors(rng: random.Random, dark_mode_probability: float = 0.2):
    """`(background, ink)`: light paper with dark ink, or sometimes the reverse. The ranges are 110 levels apart
    in every channel (80 where `background` shades the paper)."""
    if rng.random() < dark_mode_probability:
        return dark_color(rng), light_color(rng)
    return light_color(rng), dark_color(rng)


def background(rng: random.Random, size: tuple[int, int], base: tuple[int, int, int]) -> PIL.Image.Image:
    """RGB image of `size` in the tone of `base`: flat, a two-tone gradient, or ruled paper.

    The gradient's second tone stays within 30 levels of `base` per channel, keeping the ink contrast of `text_colors`.
    """
    width, height = size
    style = rng.choice(("flat", "flat", "gradient", "ruled"))
    if style == "gradient":
        other = np.clip(np.array(base) + [rng.randint(-30, 30) for _ in range(3)], 0, 255)
        vertical = rng.random() < 0.5
        steps = np.linspace(0.0, 1.0, height if vertical else width)[:, None]
        ramp = np.round((1 - steps) * np.array(base) + steps * other).astype(np.uint8)  # [steps, 3]
        strip = PIL.Image.fromarray(ramp[:, None, :] if vertical else ramp[None])  # [H, 1, 3] or [1, W, 3]
        return strip.resize(size, PIL.Image.NEAREST)
    image = PIL.Image.new("RGB", size, base)
    if style == "ruled":
        line = tuple(int(c * 0.85) for c in base)
        spacing = rng.randint(14, 28)
        draw = PIL.ImageDraw.Draw(image)
        for y in range(rng.randint(4, spacing), height, spacing):
            draw.line([(0, y), (width, y)], fill=line, width=1)
    return image


@functools.lru_cache(maxsize=None)
def advance(font_name: str, size: int, char: str) -> float:
    return font(font_name, size).getlength(char)


def text_width(font_name: str, size: int, text: str) -> float:
    """Advance width of `text` in pixels: the sum of its characters' advances, exact here because the shipped fonts
    have no kerning and the basic layout adds advances (and ~100x faster than asking FreeType for each string)."""
    return sum(advance(font_name, size, char) for char in text)


@functools.lru_cache(maxsize=None)
def font_metrics(font_name: str, size: int) -> tuple[int, int]:
    """`(ascent, descent)` in pixels."""
    return font(font_name, size).getmetrics()


def line_height(size: int) -> int:
    """Baseline-to-baseline distance used for stacked lines (DejaVu's ascent + descent is 1.17 em)."""
    return round(1.3 * size)


def largest_font_size(font_name: str, lines: list[str], max_width: float, max_height: float, cap: int = 96) -> int:
    """Largest size (at most `cap`) at which `lines`, stacked `line_height` apart, fit in `max_width x max_height`;
    0 when none does. Measured at size 100 and scaled, then checked at the chosen size."""
    widest = max(lines, key=lambda line: text_width(font_name, 100, line))
    scale = min(max_width / max(text_width(font_name, 100, widest), 1), max_height / (1.3 * 100 * len(lines)))
    size = min(cap, int(100 * scale))
    # Advances round per size, so the scaled estimate can be a pixel too wide.
    while size > 0 and text_width(font_name, size, widest) > max_width:
        size -= 1
    return max(size, 0)


def draw_text(draw: PIL.ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font_name: str, size: int,
              fill) -> list[float]:
    """Draw `text` with its origin (left end of the ascender line) at `xy`; returns its line box `[x1, y1, x2, y2]`
    (advance width by ascent + descent), the usual box of a text-detection label."""
    draw.text(xy, text, font=font(font_name, size), fill=fill, anchor="la")
    ascent, descent = font_metrics(font_name, size)
    return [xy[0], xy[1], xy[0] + text_width(font_name, size, text), xy[1] + ascent + descent]
