"""Synthetic SPHINX-X training data: OCR-intensive images, Set-of-Mark scenes and grounding, as HF datasets.

    from sphinx_x.training.synthetic import make_mixture
    splits = make_mixture(seed=0, sizes={"ocr": 4000, "set_of_mark": 3000, "grounding": 3000})
    splits["train"][0]["messages"], splits["train"][0]["images"]
"""

from .boxes import Grounding, box_iou, box_to_pixels, format_box, normalize_box, parse_boxes
from .dataset import (
    DEFAULT_HELDOUT_SIZES,
    DEFAULT_TRAIN_SIZES,
    FAMILIES,
    FEATURES,
    build_dataset,
    chat_messages,
    generate_sample,
    make_mixture,
)
from .grounding import GROUNDING_TASKS, REC_PROMPT, REG_PROMPT
from .ocr import CODE_ALPHABET, OCR_TASKS, code_split
from .sample import Sample
from .scene import COLORS, SHAPES
from .set_of_mark import SOM_TASKS


__all__ = [
    "CODE_ALPHABET",
    "COLORS",
    "DEFAULT_HELDOUT_SIZES",
    "DEFAULT_TRAIN_SIZES",
    "FAMILIES",
    "FEATURES",
    "GROUNDING_TASKS",
    "Grounding",
    "OCR_TASKS",
    "REC_PROMPT",
    "REG_PROMPT",
    "SHAPES",
    "SOM_TASKS",
    "Sample",
    "box_iou",
    "box_to_pixels",
    "build_dataset",
    "chat_messages",
    "code_split",
    "format_box",
    "generate_sample",
    "make_mixture",
    "normalize_box",
    "parse_boxes",
]
