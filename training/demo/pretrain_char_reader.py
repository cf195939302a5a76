"""Teach the demo's character reader to name the code character at each tile cell, before one-stage training.

    python -m sphinx_x.training.demo.pretrain_char_reader MODEL [--images 10000] [--steps 1100] [--resume] [--seed S]

The demo reads printed 4-character codes through a second small ConvNeXt (`SphinxXConfig.char_reader_config`) whose
logits feed a word gate (`cells: "tiles"`): where it names a character, the LLM receives that character's token in
place of the tile token, so the answer is a copy of four words in reading order. The reader of marks and counts could
not learn characters as well without losing what it reads (docs/demo_model.md), hence a reader of its own.

Labels, per tile cell (class 0 "none", then `DEMO_CODE_CHARACTERS`): each character of the code gets one cell of the
canvas row through its centre (placed with the font's advances). Characters in one tile take distinct cells in their
order: a character whose centre falls in its left neighbour's cell moves one cell right (and back left where that
overflows the tile), so that a perfect reader passes every character to the LLM. Label lines ("ID: K7QF") and the
tiles without text read "none"; scenes of shapes and Set-of-Mark labels (whose digits 2-6 are code characters) are
mixed in as cells that read "none", since the gate is on for every image.

The reader starts fresh (with `--resume`, from MODEL's character reader, on new images when `--seed` changes) and is
saved into MODEL in place (a temporary folder, then a rename); the rest of MODEL is unchanged.
"""

import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...presets import DEMO_CODE_CHARACTERS
from ..synthetic.render import advance
from .init_projector import load_in_place, save_in_place, token_regions
from .pretrain_reader import marked_scene, pretrain_parser, pretrain_report, print_report, reader_optimizer


IGNORED = -100  # a label that teaches nothing (`F.cross_entropy`'s ignore_index)
EMPTY_CELL_WEIGHT = 0.2  # "none" is 20-60 times as common as any one character
SCENES = {"ocr_code": 0.75, "som_color": 0.1, "count": 0.05, "shape_color": 0.05, "grounding_rec": 0.05}


def code_centres(sample, scale: float) -> list[tuple[str, float, float]]:
    """`(character, x, y)` canvas centres of the code's characters in a code image: the code is the end of the line
    that holds it ("ID: K7QF" or "K7QF"); advances come from the line's font (no kerning)."""
    code, font = sample.details["code"], (sample.details["font"], sample.details["font_size"])
    line = next(drawn for drawn in sample.objects if drawn.get("text", "").endswith(code))
    x1, y1, _, y2 = (value * scale for value in line["box"])
    x = x1 + sum(advance(*font, char) for char in line["text"][: -len(code)]) * scale
    centres = []
    for char in code:
        width = advance(*font, char) * scale
        centres.append((char, x + width / 2, (y1 + y2) / 2))
        x += width
    return centres


def distinct_cells(columns: list[int], width: int) -> list[int] | None:
    """Increasing cells in `[0, width)` as close as possible to `columns` (sorted), by one pass each way; `None` when
    more characters than cells."""
    if len(columns) > width:
        return None
    cells = []
    for column in columns:
        cells.append(max(column, cells[-1] + 1) if cells else column)
    for index in range(len(cells) - 1, -1, -1):
        cells[index] = min(cells[index], width - 1 if index == len(cells) - 1 else cells[index + 1] - 1)
    return cells


def character_labels(config, centres: list[tuple[str, float, float]], view_mask: list[bool]) -> torch.Tensor:
    """`[kept tile views, g*g]` label classes (0 none, else 1 + index in `DEMO_CODE_CHARACTERS`) of the characters at
    canvas `centres`, tile views in the model's order."""
    grid = config.dinov2_config.image_size // config.dinov2_config.patch_size
    regions = [region for region, keep in zip(token_regions(config)[1:], view_mask[1:]) if keep]
    labels = torch.zeros(len(regions), grid * grid, dtype=torch.long)
    for view, (left, top, cell) in enumerate(regions):
        inside = [(char, int((cx - left) // cell), int((cy - top) // cell)) for char, cx, cy in centres
                  if left <= cx < left + grid * cell and top <= cy < top + grid * cell]
        for row in sorted({row for _, _, row in inside}):
            line = [(char, column) for char, column, char_row in inside if char_row == row]
            cells = distinct_cells([column for _, column in line], grid)
            if cells is None:
                labels[view, row * grid:(row + 1) * grid] = IGNORED
                continue
            for (char, _), column in zip(line, cells):
                labels[view, row * grid + column] = DEMO_CODE_CHARACTERS.index(char) + 1
    return labels


@torch.inference_mode()
def char_examples(model, processor, images: int, seed: int, split: str):
    """`(views [N, 3, S, S] float16, labels [N, g*g], codes)`: the tile views of `images` scenes as the character
    reader sees them, their labels, and per image `(first view, kept tile views, code or "")`."""
    from ..synthetic.dataset import generate_sample
    from .make_data import MAX_SIDE

    config, rng = model.config, random.Random(seed)
    views, labels, codes = [], [], []
    for index in tqdm(range(images), desc=f"character reader {split} images", unit="image"):
        task = rng.choices(list(SCENES), list(SCENES.values()))[0]
        if task == "som_color" and split == "train":
            sample = marked_scene(rng)
        else:
            sample = generate_sample(task, index, seed=seed, split=split, max_side=MAX_SIDE, shape_count=(1, 6))
        inputs = processor.image_processor(sample.image, return_tensors="pt")
        view_mask = torch.cat([torch.ones(1, 1, dtype=torch.bool), inputs["image_tile_mask"].bool()], dim=1)
        tiles = model.model.encoder_views(inputs["pixel_values"], config.char_reader_config.image_size, view_mask)[1:]
        scale = config.tile_size * config.image_grid[0] / max(sample.image.size)
        centres = code_centres(sample, scale) if task == "ocr_code" else []
        codes.append((sum(len(part) for part in views), len(tiles), sample.details.get("code", "") if centres else ""))
        views.append(tiles.half())
        labels.append(character_labels(config, centres, view_mask[0].tolist()))
    return torch.cat(views), torch.cat(labels), codes


@torch.no_grad()
def reading(reader, views: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """`[N, g*g]` the class the reader names at each grid cell."""
    dtype = next(reader.parameters()).dtype
    return torch.cat([reader(views[start:start + batch].to(dtype).contiguous(memory_format=torch.channels_last))[:, 1:]
                      .argmax(-1)
                      for start in range(0, len(views), batch)])


def char_accuracy(reader, views, labels, codes) -> dict:
    """Held-out: characters named right at their cells, cells without one where it names a character, codes whose
    four cells are all named right, and codes whose named characters, in the order the LLM receives the tiles
    (row-major cells of row-major tiles), spell the code exactly (no character missed or named elsewhere)."""
    named = reading(reader, views)
    chars, empty = labels > 0, labels == 0
    read, spelled = [], []
    for first, count, code in codes:
        if code:
            cells, truth = named[first:first + count].flatten(), labels[first:first + count].flatten()
            read.append(bool((cells[truth > 0] == truth[truth > 0]).all()) and int((truth > 0).sum()) == len(code))
            spelled.append("".join(DEMO_CODE_CHARACTERS[index - 1] for index in cells[cells > 0].tolist()) == code)
    return {"character": (named[chars] == labels[chars]).float().mean().item(),
            "fired off characters": (named[empty] > 0).float().mean().item(),
            "codes read at their cells": sum(read) / max(len(read), 1),
            "codes spelled": sum(spelled) / max(len(spelled), 1)}


def pretrain(model_dir: Path, images: int = 10000, steps: int = 1100, batch: int = 64, learning_rate: float = 2e-3,
             seed: int = 0, resume: bool = False) -> dict:
    """Train a character reader for `model_dir`, fresh or (`resume`) from its current one (see the module docstring),
    and save the model in place."""
    from ...modeling_sphinx_x import SphinxXCharReader

    torch.manual_seed(seed)
    model_dir, model, processor = load_in_place(model_dir)
    if model.model.char_reader is None:
        raise ValueError(f"{model_dir} has no character reader (char_reader_config) to pretrain.")
    train = char_examples(model, processor, images, seed=seed + 6, split="train")
    heldout = char_examples(model, processor, max(images // 40, 10), seed=seed + 7, split="heldout")
    # channels-last convolutions: 1.5 s per step of 64 views on a 2-core CPU instead of 2.2 (bfloat16 autocast: 30 s)
    reader = SphinxXCharReader(model.config.char_reader_config, model.config.token_grid_size)
    if resume:
        reader.load_state_dict(model.model.char_reader.state_dict())
    reader = reader.to(memory_format=torch.channels_last)
    optimizer, schedule = reader_optimizer(reader, learning_rate, steps)
    class_weight = torch.ones(model.config.char_reader_config.num_labels)
    class_weight[0] = EMPTY_CELL_WEIGHT
    generator = torch.Generator().manual_seed(seed)
    reader.train()
    started = time.time()
    for step in tqdm(range(steps), desc="character reader", unit="step"):
        chosen = torch.randint(len(train[0]), (batch,), generator=generator)
        logits = reader(train[0][chosen].float().contiguous(memory_format=torch.channels_last))[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1), train[1][chosen].flatten(), weight=class_weight,
                               ignore_index=IGNORED)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 400 == 0:
            reader.eval()
            tqdm.write(f"step {step + 1}: loss {loss.item():.3f}, held-out {char_accuracy(reader, *heldout)}")
            reader.train()
    reader.eval()
    model.model.char_reader.load_state_dict(reader.state_dict())
    report = pretrain_report(len(train[0]), steps, started, char_accuracy(reader, *heldout))
    save_in_place(model, processor, model_dir)
    return report


def main(argv=None) -> None:
    parser = pretrain_parser(__doc__, "a demo model folder with a character reader", 10000, 1100, 64, 2e-3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the images (train: seed + 6, held out: seed + 7)")
    parser.add_argument("--resume", action="store_true", help="go on from MODEL's character reader")
    args = parser.parse_args(argv)
    print_report(parser, lambda: pretrain(args.model, args.images, args.steps, args.batch, args.learning_rate,
                                          args.seed, args.resume))


if __name__ == "__main__":
    main()
