"""Questions about unlabelled shapes: the colour, kind and side of a single shape, and how many shapes a scene holds.

These are the first things a vision-language model must get right (SPHINX-X's data has them in its captioning and
VQA parts); every answer is one lowercase word or one number, each question kind always uses the same wording.
"""

import random

from .render import choose
from .sample import Sample, drawn_object
from .scene import make_scene


SCENE_TASKS = {"shape_color": 0.25, "shape_kind": 0.25, "shape_side": 0.15, "count": 0.35}
COUNT_RANGE = (1, 6)
MAX_ATTEMPTS = 50


def side_of(region, width: float) -> str | None:
    """"left" or "right" for a shape clearly in one half of the image (its centre outside the middle fifth)."""
    center = (region.box[0] + region.box[2]) / 2
    if center < 0.4 * width:
        return "left"
    if center > 0.6 * width:
        return "right"
    return None


def count_turn(regions: list) -> tuple[str, str]:
    """The counting `(question, answer)` of a scene; multi-turn Set-of-Mark and grounding samples end with it too."""
    return "How many shapes are in the image?", str(len(regions))


def ask(task: str, regions: list, width: int) -> tuple[str, str] | None:
    """`(question, answer)` of `task` about this scene, or `None` when it has no clear-cut answer."""
    if task == "count":
        return count_turn(regions)
    if len(regions) != 1:
        return None
    region = regions[0]
    if task == "shape_color":
        return "What color is the shape?", region.color
    if task == "shape_kind":
        return "What shape is in the image?", region.shape
    side = side_of(region, width)
    return ("Is the shape on the left or on the right?", side) if side else None


def scene_sample(rng: random.Random, task: str | None = None, max_side: int = 512, turns: int = 1) -> Sample:
    """One sample of `task` (one of `SCENE_TASKS`; drawn by its weight when `None`). Single-shape tasks draw one
    shape and, with `turns` > 1, ask the other single-shape questions too (in random order, up to `turns` in all);
    counting scenes draw 1-6 shapes and ask one question."""
    task = task or choose(rng, SCENE_TASKS)
    count_range = COUNT_RANGE if task == "count" else (1, 1)
    for _ in range(MAX_ATTEMPTS):
        image, regions = make_scene(rng, max_side, count_range=count_range)
        asked = ask(task, regions, image.width)
        if asked is None:
            continue
        follow_ups = []
        if task != "count":
            others = [t for t in SCENE_TASKS if t not in (task, "count")]
            for other in rng.sample(others, len(others))[: turns - 1]:
                if (more := ask(other, regions, image.width)) is not None:
                    follow_ups.append(more)
        objects = [drawn_object(r.box, shape=r.shape, color=r.color) for r in regions]
        return Sample(image, task, *asked, objects, details={"count": len(regions)}, follow_ups=follow_ups)
    raise RuntimeError(f"No scene for a clear-cut {task} question in {MAX_ATTEMPTS} attempts at max_side={max_side}.")
