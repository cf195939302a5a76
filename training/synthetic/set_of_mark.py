"""Set-of-Mark samples (SPHINX-X's SoM data, spec section 11): shapes overlaid with numbered marks, and questions
about one mark's colour, shape or position. Every answer is one lowercase word or one number, and each question
kind always uses the same wording, so a model learns one answer format per kind."""

import random

from .render import choose
from .sample import Sample, drawn_object
from .scene import SIDES, above, beyond, draw_mark, left_of, make_scene
from .scene_questions import count_turn


SOM_TASKS = {"som_color": 0.35, "som_shape": 0.2, "som_relation": 0.2, "som_extreme": 0.15, "som_label": 0.1}
MAX_ATTEMPTS = 50


def ask(task: str, rng: random.Random, regions: list, marks: list[int]):
    """`(question, answer, details)` for `task` on this scene, or `None` when the scene cannot give a clear-cut
    question of that kind (no pair apart on either axis, no unique extreme shape, no unique colour and shape)."""
    order = rng.sample(range(len(regions)), len(regions))
    if task == "som_color":
        target = order[0]
        return f"What color is the shape labeled {marks[target]}?", regions[target].color, {"mark": marks[target]}
    if task == "som_shape":
        target = order[0]
        return f"What shape is labeled {marks[target]}?", regions[target].shape, {"mark": marks[target]}
    if task == "som_relation":
        apart = {"horizontal": left_of, "vertical": above}
        pairs = [(a, b, axis) for axis in rng.sample(list(apart), 2) for a in order for b in order
                 if apart[axis](regions[a], regions[b]) or apart[axis](regions[b], regions[a])]
        if not pairs:
            return None
        a, b, axis = pairs[0]
        if axis == "horizontal":
            question = f"Is the shape labeled {marks[a]} to the left or to the right of the shape labeled {marks[b]}?"
            answer = "left" if left_of(regions[a], regions[b]) else "right"
        else:
            question = f"Is the shape labeled {marks[a]} above or below the shape labeled {marks[b]}?"
            answer = "above" if above(regions[a], regions[b]) else "below"
        return question, answer, {"marks": [marks[a], marks[b]]}
    if task == "som_extreme":
        options = [(side, t) for side in rng.sample(SIDES, len(SIDES)) for t in order
                   if all(beyond(regions[t], regions[o], side) for o in order if o != t)]
        if not options:
            return None
        side, target = options[0]
        word = f"{side}most"
        return f"Which label is on the {word} shape?", str(marks[target]), {"direction": word, "mark": marks[target]}
    looks = [(region.color, region.shape) for region in regions]
    unique = [t for t in order if looks.count(looks[t]) == 1]
    if not unique:
        return None
    target = unique[0]
    color, shape = looks[target]
    return f"Which label is on the {color} {shape}?", str(marks[target]), {"mark": marks[target]}


def set_of_mark_sample(rng: random.Random, task: str | None = None, max_side: int = 512, turns: int = 1,
                       shape_count: tuple[int, int] = (2, 6)) -> Sample:
    """One Set-of-Mark sample of `task` (one of `SOM_TASKS`; drawn by its weight when `None`): `shape_count` shapes,
    each labelled with a distinct number from 1, in shuffled order. With `turns` > 1, up to `turns - 2` more distinct
    questions of the same kind on the same scene follow the first, then the scene's counting question."""
    task = task or choose(rng, SOM_TASKS)
    for _ in range(MAX_ATTEMPTS):
        image, regions = make_scene(rng, max_side, count_range=shape_count)
        marks = rng.sample(range(1, len(regions) + 1), len(regions))
        asked = ask(task, rng, regions, marks)
        if asked is None:
            continue
        for region, mark in zip(regions, marks):
            draw_mark(image, region, mark)
        question, answer, details = asked
        follow_ups = []
        for _ in range(4 * (turns - 2)):  # distinct questions; a few draws repeat one
            if len(follow_ups) == turns - 2:
                break
            more = ask(task, rng, regions, marks)
            if more and more[0] not in [question, *dict(follow_ups)]:
                follow_ups.append(more[:2])
        if turns > 1:
            follow_ups.append(count_turn(regions))
        objects = [drawn_object(r.box, shape=r.shape, color=r.color, mark=m) for r, m in zip(regions, marks)]
        return Sample(image, task, question, answer, objects, details=details, follow_ups=follow_ups)
    raise RuntimeError(f"No scene for a clear-cut {task} question in {MAX_ATTEMPTS} attempts at max_side={max_side}.")
