"""Synthetic samples as Hugging Face datasets, in the chat format of the SPHINX-X processor and TRL's SFTTrainer.

Every sample is a function of `(seed, split, key, index)` alone: its random generator is seeded with that string,
so a dataset is reproducible, any subset can be regenerated, and train and held-out data never share a generator
(4-character codes are also partitioned, see `ocr.code_split`).
"""

import json
import random
import struct
import zlib

import numpy as np
import PIL.Image
from datasets import Dataset, DatasetDict, Features, Image, List, Value
from tqdm import tqdm

from .boxes import PLACEMENTS
from .grounding import GROUNDING_TASKS, grounding_sample
from .ocr import DOCUMENT_TASKS, OCR_TASKS, ocr_sample
from .render import MIN_MAX_SIDE, MIN_MAX_SIDE_DOCUMENTS
from .sample import Sample
from .scene_questions import SCENE_TASKS, scene_sample
from .set_of_mark import SOM_TASKS, set_of_mark_sample


FAMILIES = {"ocr": OCR_TASKS, "set_of_mark": SOM_TASKS, "grounding": GROUNDING_TASKS, "scene": SCENE_TASKS}
TASK_FAMILY = {task: family for family, tasks in FAMILIES.items() for task in tasks}
SPLITS = ("train", "heldout")
DEFAULT_TRAIN_SIZES = {"ocr": 4000, "set_of_mark": 3000, "grounding": 3000}
DEFAULT_HELDOUT_SIZES = {"ocr_code": 200, "ocr_receipt": 100, "som_color": 200, "som_shape": 100, "grounding_rec": 200}

# messages: the chat (user: image + question, assistant: answer, then any follow-up turns); images: one PNG;
# task: e.g. "ocr_code"; question / answer: the texts of the first turn, the answer exact for scoring;
# width / height: image pixels; objects: what was drawn (text lines, or shapes with colour and mark), boxes
# `[x1, y1, x2, y2]` in pixels; target_box: the pixel box a grounding answer encodes ([] otherwise); details: task
# facts as JSON (receipt items, table cells, the mark asked about, the expression, ...);
# sample_id: "{seed}/{split}/{key}/{index}".
FEATURES = Features({
    "messages": List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}),
    "images": List(Image()),
    "task": Value("string"),
    "question": Value("string"),
    "answer": Value("string"),
    "width": Value("int32"),
    "height": Value("int32"),
    "objects": List({
        "text": Value("string"),
        "shape": Value("string"),
        "color": Value("string"),
        "mark": Value("int32"),
        "box": List(Value("float64"), length=4),
    }),
    "target_box": List(Value("float64")),
    "details": Value("string"),
    "sample_id": Value("string"),
})


def generate_sample(key: str, index: int, seed: int = 0, split: str = "train", max_side: int = 512,
                    placement: str = "top_left", turns: int = 1, shape_count: tuple[int, int] = (2, 6)) -> Sample:
    """Sample `index` of `key`: a family of `FAMILIES` (tasks drawn by their weights) or one task of a family.

    Args:
        key (`str`): "ocr", "set_of_mark", "grounding", "scene", or a task such as "ocr_code" or "som_color".
        index (`int`), seed (`int`), split (`str`, "train" or "heldout"): together seed the sample's generator.
        max_side (`int`): longest image side in pixels (long sides are drawn in `[0.75, 1] * max_side`), at least
            `MIN_MAX_SIDE_DOCUMENTS` where receipts or tables can be drawn, `MIN_MAX_SIDE` otherwise.
        placement (`str`): how grounding boxes are normalised, "top_left" (SPHINX-X) or "center" (released SPHINX).
        turns (`int`): Set-of-Mark, grounding and single-shape samples ask up to this many questions on one image (a
            multi-turn conversation: more supervision per encoded image; Set-of-Mark and grounding scenes end with
            their counting question); OCR and counting samples ask one.
        shape_count (`tuple[int, int]`): how many shapes Set-of-Mark and grounding scenes draw from (fewer where
            they do not fit).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if key not in FAMILIES and key not in TASK_FAMILY:
        raise ValueError(f"Unknown sample kind {key!r}; use a family ({', '.join(FAMILIES)}) or a task "
                         f"({', '.join(TASK_FAMILY)}).")
    family, task = (key, None) if key in FAMILIES else (TASK_FAMILY[key], key)
    if any(kind in DOCUMENT_TASKS for kind in FAMILIES.get(key, [key])) and max_side < MIN_MAX_SIDE_DOCUMENTS:
        raise ValueError(f"max_side must be at least {MIN_MAX_SIDE_DOCUMENTS} for legible receipts and tables "
                         f"({key!r}), got {max_side}; ask for other tasks (e.g. 'ocr_code') to render smaller images.")
    if max_side < MIN_MAX_SIDE:
        raise ValueError(f"max_side must be at least {MIN_MAX_SIDE} for legible shapes, marks and words, "
                         f"got {max_side}.")
    rng = random.Random(f"sphinx-x-synthetic/{seed}/{split}/{key}/{index}")
    if family == "ocr":
        return ocr_sample(rng, task, split=split, max_side=max_side)
    if family == "set_of_mark":
        return set_of_mark_sample(rng, task, max_side=max_side, turns=turns, shape_count=shape_count)
    if family == "scene":
        return scene_sample(rng, task, max_side=max_side, turns=turns)
    return grounding_sample(rng, task, max_side=max_side, placement=placement, turns=turns, shape_count=shape_count)


def chat_messages(question: str, answer: str, follow_ups: list[tuple[str, str]] = ()) -> list[dict]:
    """The first user turn (the image, then the question) and the assistant's answer, then one user and one
    assistant turn per follow-up `(question, answer)`."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    for follow_up, reply in follow_ups:
        messages += [
            {"role": "user", "content": [{"type": "text", "text": follow_up}]},
            {"role": "assistant", "content": [{"type": "text", "text": reply}]},
        ]
    return messages


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(image: PIL.Image.Image) -> bytes:
    """Lossless PNG bytes of an RGB image.

    Written directly because PIL's encoder spends most of its time choosing a filter per row: the fixed "Up" filter
    (each row minus the one above, mostly zeros on flat synthetic images) with zlib level 1 is 2-3x faster here
    for files of about the same size, and image encoding is the largest cost of building a dataset.
    """
    pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
    height, width, _ = pixels.shape
    up = pixels.copy()
    up[1:] -= pixels[:-1]  # uint8 wrap-around is what the PNG Up filter specifies
    scanlines = np.concatenate([np.full((height, 1), 2, np.uint8), up.reshape(height, -1)], axis=1)  # 2 = Up
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    data = zlib.compress(scanlines.tobytes(), 1)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def to_row(sample: Sample, sample_id: str) -> dict:
    """A dataset row (see `FEATURES`) with the image already PNG-encoded."""
    return {
        "messages": chat_messages(sample.question, sample.answer, sample.follow_ups),
        "images": [{"bytes": encode_png(sample.image), "path": None}],
        "task": sample.task,
        "question": sample.question,
        "answer": sample.answer,
        "width": sample.image.width,
        "height": sample.image.height,
        "objects": sample.objects,
        "target_box": sample.target_box,
        "details": json.dumps(sample.details, sort_keys=True),
        "sample_id": sample_id,
    }


def build_dataset(sizes: dict[str, int], seed: int = 0, split: str = "train", max_side: int = 512,
                  placement: str = "top_left", shuffle: bool = False, turns: int = 1,
                  shape_count: tuple[int, int] = (2, 6)) -> Dataset:
    """A `Dataset` with `sizes[key]` samples of each key (family or task, see `generate_sample`, which also explains
    `turns` and `shape_count`).

    Rows come grouped by key in the order of `sizes`, or in an order shuffled by `seed` with `shuffle`. A row's
    `sample_id` is `"{seed}/{split}/{key}/{index}"`, from which `generate_sample` rebuilds it.
    """
    jobs = [(key, index) for key, count in sizes.items() for index in range(count)]
    if shuffle:
        random.Random(f"sphinx-x-synthetic/{seed}/{split}/order").shuffle(jobs)
    rows = [
        to_row(generate_sample(key, index, seed, split, max_side, placement, turns, shape_count),
               f"{seed}/{split}/{key}/{index}")
        for key, index in tqdm(jobs, desc=f"{split} samples", unit="sample", disable=len(jobs) < 1000)
    ]
    return Dataset.from_list(rows, features=FEATURES)


def make_mixture(seed: int = 0, sizes: dict[str, int] | None = None, heldout_sizes: dict[str, int] | None = None,
                 max_side: int = 512, placement: str = "top_left", turns: int = 1,
                 train_shape_count: tuple[int, int] = (2, 6)) -> DatasetDict:
    """Train and held-out splits (`DatasetDict` with "train", shuffled, and "heldout", grouped by key).

    Args:
        seed (`int`): the same seed gives the same datasets; the two splits use disjoint generator seeds.
        sizes, heldout_sizes (`dict[str, int]`): samples per family or task; defaults `DEFAULT_TRAIN_SIZES` and
            `DEFAULT_HELDOUT_SIZES` (the held-out default targets the evaluations: code exact match, receipt totals,
            Set-of-Mark colour and shape accuracy, grounding IoU).
        max_side (`int`): longest image side; the processor resizes every image to its canvas anyway.
        placement (`str`): box normalisation for grounding answers, "top_left" (SPHINX-X) or "center".
        turns (`int`): questions per training image (see `generate_sample`); held-out samples ask one.
        train_shape_count (`tuple[int, int]`): shapes per training scene; held-out scenes have 2-6.
    """
    options = {"seed": seed, "max_side": max_side, "placement": placement}
    train_sizes = DEFAULT_TRAIN_SIZES if sizes is None else sizes
    return DatasetDict({
        "train": build_dataset(train_sizes, split="train", shuffle=True, turns=turns, shape_count=train_shape_count,
                               **options),
        "heldout": build_dataset(DEFAULT_HELDOUT_SIZES if heldout_sizes is None else heldout_sizes, split="heldout",
                                 **options),
    })
