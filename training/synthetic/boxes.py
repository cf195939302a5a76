"""SPHINX grounding boxes (spec section 9): the processor's own format and parse functions
(`sphinx_x.processors.grounding`), so that training data and model answers never disagree about a box."""

from ...processors.grounding import (  # noqa: F401
    PLACEMENTS,
    Grounding,
    box_area,
    box_iou,
    box_to_pixels,
    format_box,
    normalize_box,
    parse_boxes,
    parse_group,
)
