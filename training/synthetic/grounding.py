"""Grounding samples (spec section 9): referring expressions to SPHINX boxes ("grounding_rec", the reference REC
prompt) and boxes back to expressions ("grounding_reg")."""

import random

from .boxes import format_box
from .render import choose
from .sample import Sample, drawn_object
from .scene import SIDES, beyond, make_scene
from .scene_questions import count_turn


GROUNDING_TASKS = {"grounding_rec": 0.8, "grounding_reg": 0.2}
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}."
REG_PROMPT = "Please provide a short description for this region: {}."
MAX_ATTEMPTS = 50
SIDE_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


def referring_expressions(regions: list, target: int) -> list[str]:
    """Every expression that singles out `regions[target]`, most specific first: "the red circle" (colour and
    shape unique) or "the red circle on the left" (its twins all lie to one side), then "the circle" and "the red
    shape" where the shape or colour alone is unique."""
    region = regions[target]
    others = [other for index, other in enumerate(regions) if index != target]
    twins = [other for other in others if (other.color, other.shape) == (region.color, region.shape)]
    name = f"the {region.color} {region.shape}"
    if twins:
        sides = [side for side in SIDES if all(beyond(region, twin, side) for twin in twins)]
        expressions = [f"{name} {SIDE_PHRASES[side]}" for side in sides]
    else:
        expressions = [name]
    if all(other.shape != region.shape for other in others):
        expressions.append(f"the {region.shape}")
    if all(other.color != region.color for other in others):
        expressions.append(f"the {region.color} shape")
    return expressions


def ask(task: str, rng: random.Random, regions: list, target: int, size: tuple[int, int], placement: str):
    """`(question, answer, expression)` about `regions[target]`: REC asks for the box of a random valid expression,
    REG for the most specific expression of the box. `None` when no expression singles the shape out."""
    expressions = referring_expressions(regions, target)
    if not expressions:
        return None
    box_text = format_box(regions[target].box, *size, placement)
    if task == "grounding_rec":
        expression = rng.choice(expressions)
        return REC_PROMPT.format(expression), box_text, expression
    return REG_PROMPT.format(box_text), expressions[0], expressions[0]


def grounding_sample(rng: random.Random, task: str | None = None, max_side: int = 512,
                     placement: str = "top_left", turns: int = 1, shape_count: tuple[int, int] = (2, 6)) -> Sample:
    """One grounding sample of `task` (one of `GROUNDING_TASKS`; drawn by its weight when `None`).

    REC: the question carries a random valid expression and the answer is the target's box, `[x1,y1,x2,y2]`
    normalised for `placement` ("top_left" for SPHINX-X, "center" for released SPHINX checkpoints). REG: the
    question carries the box and the answer is the most specific expression, so one box has one answer. A third
    of the scenes repeat a colour and shape, which calls for "on the left" and the like. With `turns` > 1, the same
    question about up to `turns - 2` other shapes follows the first, then the scene's counting question.
    """
    task = task or choose(rng, GROUNDING_TASKS)
    for _ in range(MAX_ATTEMPTS):
        image, regions = make_scene(rng, max_side, count_range=shape_count, twin_probability=0.35)
        # Regions come in random cell order, so the first is a random shape; it is the one a twin copies.
        target = 0
        asked = ask(task, rng, regions, target, image.size, placement)
        if asked is None:
            continue
        question, answer, expression = asked
        follow_ups = []
        for other in range(1, len(regions)):
            if len(follow_ups) >= turns - 2:
                break
            more = ask(task, rng, regions, other, image.size, placement)
            if more is not None:
                follow_ups.append(more[:2])
        if turns > 1:
            follow_ups.append(count_turn(regions))
        objects = [drawn_object(r.box, shape=r.shape, color=r.color) for r in regions]
        details = {"expression": expression, "placement": placement}
        return Sample(image, task, question, answer, objects, target_box=[float(v) for v in regions[target].box],
                      details=details,
                      follow_ups=follow_ups)
    raise RuntimeError(f"No scene for a clear-cut {task} question in {MAX_ATTEMPTS} attempts at max_side={max_side}.")
