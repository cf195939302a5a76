"""Teach the demo's place reader where objects are: the tile cell that holds each shape's centre.

    python -m sphinx_x.training.demo.pretrain_place_reader MODEL [--images 12000] [--steps 2000]

A grounding answer is a box, `[x1,y1,x2,y2]` in the padded square frame, which for the demo's top-left placement is
the canvas. The LLM did not learn to write where a shape is from the image tokens alone (docs/demo_model.md,
"Grounding"), but a box follows closely from the tile cell (1/16 of the canvas) that holds the shape's centre: that
cell and the mean shape size give IoU >= 0.5 for 98.5 % of the held-out boxes. So the place reader
(`SphinxXConfig.place_words`) marks those cells, and from each marked cell on the model writes the decimals of that
box's left and top edges as the LLM's number words (" seven" for 7, never a digit token a mark or code uses): the
answer writes them as digits, as code answers copy the characters the character reader writes.

The reader is a small convolutional head on the ConvNeXt expert's tile-view grid. The ConvNeXt stays as it is (it
is the pretrained mark and count reader, `pretrain_reader`), so its outputs are computed once and the head learns
from a dense label per cell: 1 where a drawn shape's box centre lies in it. MODEL's place reader is replaced, in
place (a temporary folder, then a rename); its config must have `place_words` (the `sphinx-x-demo-places` preset).
"""

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .init_projector import load_in_place, save_in_place, token_regions
from .pretrain_reader import fit_reader, pretrain_parser, pretrain_report, print_report


# Scenes the place reader learns from: grounding scenes first, the other shape scenes so it also knows them.
SCENES = {"grounding_rec": 0.6, "som_color": 0.2, "count": 0.2}


def centre_labels(config, boxes: list[list[float]], scale: float, tile_mask: list[bool]) -> torch.Tensor:
    """`[kept tiles, g*g]` float: 1 at the cell holding the centre of each of the image-pixel `boxes` (canvas pixels
    = image pixels * `scale`, the image at the canvas's top left), in the tile it lies in; tiles in the model's order,
    those `tile_mask` skips left out."""
    grid = config.token_grid_size
    regions = [region for region, keep in zip(token_regions(config)[1:], tile_mask) if keep]
    labels = torch.zeros(len(regions), grid * grid)
    for x1, y1, x2, y2 in boxes:
        x, y = (x1 + x2) / 2 * scale, (y1 + y2) / 2 * scale
        for tile, (left, top, cell) in enumerate(regions):
            column, row = int((x - left) // cell), int((y - top) // cell)
            if 0 <= column < grid and 0 <= row < grid:
                labels[tile, row * grid + column] = 1.0
    return labels


@torch.inference_mode()
def place_examples(model, processor, images: int, seed: int, split: str):
    """`(states [N, 1 + g*g, C], labels [N, g*g])`: the ConvNeXt's output on the kept tile views of `images` scenes,
    and their centre cells."""
    from ..synthetic.dataset import generate_sample
    from .make_data import MAX_SIDE

    config, rng = model.config, random.Random(seed)
    views, labels = [], []
    for index in tqdm(range(images), desc=f"place reader {split} scenes", unit="image"):
        task = rng.choices(list(SCENES), list(SCENES.values()))[0]
        sample = generate_sample(task, index, seed=seed, split=split, max_side=MAX_SIDE, shape_count=(1, 6))
        inputs = processor.image_processor(sample.image, return_tensors="pt")
        tiles_only = torch.cat([torch.zeros(1, 1, dtype=torch.bool), inputs["image_tile_mask"].bool()], dim=1)
        views.append(model.model.encoder_views(inputs["pixel_values"], config.convnext_config.image_size, tiles_only))
        scale = config.tile_size * config.image_grid[0] / max(sample.image.size)
        boxes = [drawn["box"] for drawn in sample.objects if drawn["shape"]]
        labels.append(centre_labels(config, boxes, scale, tiles_only[0, 1:].tolist()))
    convnext, views = model.model.convnext, torch.cat(views)
    states = torch.cat([convnext(views[start:start + 256]).last_hidden_state for start in range(0, len(views), 256)])
    return states.float(), torch.cat(labels)


def place_loss(reader, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per cell, centre cells weighted up (about 1 of 64 tile cells holds one)."""
    return F.binary_cross_entropy_with_logits(reader(states), labels, pos_weight=torch.tensor(8.0))


@torch.no_grad()
def place_accuracy(reader, states: torch.Tensor, labels: torch.Tensor) -> dict:
    """Held-out: the share of centres whose cell the reader marks (p > 0.5), of marked cells that hold a centre, and
    of tile views read exactly (every centre marked, nothing else)."""
    marked = reader(states).sigmoid() > 0.5
    centres = labels > 0.5
    return {"centres found": marked[centres].float().mean().item(),
            "marks right": centres[marked].float().mean().item() if marked.any() else 0.0,
            "tiles exact": (marked == centres).all(dim=1).float().mean().item()}


def pretrain(model_dir: Path, images: int = 12000, steps: int = 2000, batch: int = 128, learning_rate: float = 3e-3,
             seed: int = 0) -> dict:
    """Train a fresh place reader for `model_dir` on its ConvNeXt's tile views and save the model in place."""
    from ...modeling_sphinx_x import SphinxXPlaceReader

    torch.manual_seed(seed)
    model_dir, model, processor = load_in_place(model_dir)
    config = model.config
    if model.model.place_reader is None:
        raise ValueError(f"{model_dir} has no place reader: its config needs `place_words` (rebuild the base with "
                         "`python -m sphinx_x.demo base DST --preset sphinx-x-demo-places`).")
    train = place_examples(model, processor, images, seed=seed + 6, split="train")
    heldout = place_examples(model, processor, max(images // 10, 10), seed=seed + 7, split="heldout")
    reader = SphinxXPlaceReader(config.convnext_config.hidden_sizes[-1], config.place_words["hidden_size"],
                                config.token_grid_size)
    started = fit_reader(reader, place_loss, train, steps, batch, learning_rate, seed, "place reader")
    model.model.place_reader.load_state_dict(reader.state_dict())
    report = pretrain_report(len(train[0]), steps, started, place_accuracy(reader, *heldout))
    save_in_place(model, processor, model_dir)
    return report


def main(argv=None) -> None:
    parser = pretrain_parser(__doc__, "a demo model folder with its pretrained ConvNeXt reader", 12000, 2000, 128, 3e-3)
    args = parser.parse_args(argv)
    print_report(parser, lambda: pretrain(args.model, args.images, args.steps, args.batch, args.learning_rate))


if __name__ == "__main__":
    main()
