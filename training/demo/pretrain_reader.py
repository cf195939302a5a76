"""Teach the demo's ConvNeXt reader to read before one-stage training: dense labels on synthetic scenes.

    python -m sphinx_x.training.demo.pretrain_reader MODEL [--images 6000] [--steps 1400]

One-stage training alone never taught the small, fresh ConvNeXt to read Set-of-Mark digits (the LLM's loss reaches
it through a few answer words per image). Here it learns from a label at every view cell instead. The reader's own
first output channels are the logits of those labels (`LABEL_CHANNELS`), so that a linear projector can hand the LLM
the words themselves (`reader_columns`): a least-squares map from free features onto word embeddings blurs them
(docs/demo_model.md). The demo preset's `reader_words` gates go further for the digit and the count: where the reader
reads one, the LLM receives that word alone in place of the token (`SphinxXConfig.reader_words`); one-stage training
then keeps the reader as it is (`freeze.vision_encoder_learning_rate: 0`). Labels per cell, class 0 meaning "none":

- the digit of the Set-of-Mark label whose centre is in the cell (none in the global view, where a digit is about
  5 pixels tall);
- the colour and the kind of the shape under the cell's centre;
- at the top-left cell only, the number of shapes whose centre lies in the view (in the global view: the image).

Set-of-Mark scenes here draw their labels from 1-6 (the chat data numbers shapes 1..n, so 4-6 are rare there and a
reader trained on it confuses them with 3). The reader starts fresh; MODEL's ConvNeXt is replaced and the projector's
ConvNeXt columns set to `reader_columns`, in place (safely: a temporary folder, then a rename); run it after
`init_projector`, which silences those columns.
"""

import argparse
import math
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..synthetic.scene import COLORS, SHAPES, draw_mark, make_scene, mark_center
from .init_projector import load_in_place, save_in_place, token_regions


MAX_COUNT = 7
# (first, last + 1) output channels of each label kind; class 0 of each is "none".
LABEL_CHANNELS = {"digit": (0, 7), "color": (7, 16), "shape": (16, 22), "count": (22, 31)}
# Scenes the reader learns from (Set-of-Mark scenes carry the digits, the others colour, kind and count).
SCENES = {"som_color": 0.7, "count": 0.2, "shape_color": 0.05, "grounding_rec": 0.05}
LOSS_WEIGHTS = {"digit": 3.0, "color": 0.3, "shape": 0.3, "count": 0.6}
EMPTY_CELL_WEIGHT = 0.1  # "no digit / no count here" is 30-60 times as common as any digit
READER_SHARE = 0.5  # a confident cell's words, as a share of a LayerNorm-normalised vector (pre-LayerNorm)
CONFIDENT_LOGIT = 6.0  # a pretrained reader's winning digit logit (measured: 6.6 on average, the others -1.1)


def label_words() -> dict[str, list[str | None]]:
    """The word each label class stands for (`None` for "none"), per kind, in channel order."""
    return {"digit": [None] + [str(k) for k in range(1, 7)], "color": [None, *COLORS], "shape": [None, *SHAPES],
            "count": [None] + [str(k) for k in range(MAX_COUNT + 1)]}


def marked_scene(rng: random.Random):
    """A Set-of-Mark scene (1-6 shapes at the demo's 224 px) labelled with distinct digits drawn from 1-6."""
    from .make_data import MAX_SIDE

    image, regions = make_scene(rng, MAX_SIDE, count_range=(1, 6))
    marks = rng.sample(range(1, 7), len(regions))
    for region, mark in zip(regions, marks):
        draw_mark(image, region, mark)
    objects = [{"box": region.box, "shape": region.shape, "color": region.color, "mark": mark, "text": ""}
               for region, mark in zip(regions, marks)]
    return SimpleNamespace(image=image, objects=objects)


def view_labels(config, objects: list[dict], scale: float, view_mask: list[bool]) -> torch.Tensor:
    """`[kept views, 4, g*g]` label classes (digit, colour, shape, count; 0 for none) for the drawn `objects` (boxes
    in image pixels, `scale` canvas pixels per image pixel), views in the model's order."""
    grid = config.dinov2_config.image_size // config.dinov2_config.patch_size
    regions = [region for region, keep in zip(token_regions(config), view_mask) if keep]
    labels = torch.zeros(len(regions), 4, grid * grid, dtype=torch.long)
    shapes = [drawn for drawn in objects if drawn["shape"]]
    centres = [[value * scale for value in mark_center(drawn["shape"], drawn["box"])] for drawn in shapes]
    middles = torch.arange(grid, dtype=torch.float64) + 0.5
    for view, (left, top, cell) in enumerate(regions):
        y, x = torch.meshgrid(top + middles * cell, left + middles * cell, indexing="ij")  # cell centres, row-major
        x, y = x.flatten(), y.flatten()
        for drawn, (cx, cy) in zip(shapes, centres):
            x1, y1, x2, y2 = (value * scale for value in drawn["box"])
            under = (x1 <= x) & (x < x2) & (y1 <= y) & (y < y2)
            labels[view, 1, under] = list(COLORS).index(drawn["color"]) + 1
            labels[view, 2, under] = SHAPES.index(drawn["shape"]) + 1
            row, col = int((cy - top) // cell), int((cx - left) // cell)
            if view > 0 and drawn["mark"] and 0 <= row < grid and 0 <= col < grid:
                labels[view, 0, row * grid + col] = drawn["mark"]
        inside = sum(left <= cx < left + grid * cell and top <= cy < top + grid * cell for cx, cy in centres)
        labels[view, 3, 0] = min(inside, MAX_COUNT) + 1
    return labels


@torch.inference_mode()
def reader_examples(model, processor, images: int, seed: int, split: str):
    """`(views [N, 3, S, S] float16, labels [N, 4, g*g], is_global [N] bool)` of `images` scenes, as the ConvNeXt
    sees them (the global view of each image first, then its kept tiles)."""
    from ..synthetic.dataset import generate_sample
    from .make_data import MAX_SIDE

    config, rng = model.config, random.Random(seed)
    views, labels, is_global = [], [], []
    for index in tqdm(range(images), desc=f"reader {split} scenes", unit="image"):
        task = rng.choices(list(SCENES), list(SCENES.values()))[0]
        if task == "som_color" and split == "train":
            sample = marked_scene(rng)
        else:  # held out: the chat data's own scenes, numbered 1..n
            sample = generate_sample(task, index, seed=seed, split=split, max_side=MAX_SIDE, shape_count=(1, 6))
        inputs = processor.image_processor(sample.image, return_tensors="pt")
        view_mask = torch.cat([torch.ones(1, 1, dtype=torch.bool), inputs["image_tile_mask"].bool()], dim=1)
        views.append(model.model.encoder_views(inputs["pixel_values"], config.convnext_config.image_size, view_mask))
        scale = config.tile_size * config.image_grid[0] / max(sample.image.size)
        labels.append(view_labels(config, sample.objects, scale, view_mask[0].tolist()))
        is_global += [True] + [False] * (len(labels[-1]) - 1)
    return torch.cat(views).half(), torch.cat(labels), torch.tensor(is_global)


def label_logits(reader, views: torch.Tensor) -> list[torch.Tensor]:
    """`[N, g*g, classes]` logits per label kind (`LABEL_CHANNELS`) of the reader's grid cells."""
    cells = reader(views.float()).last_hidden_state[:, 1:]  # the grid, without the mean token
    return [cells[..., first:last] for first, last in LABEL_CHANNELS.values()]


def reader_loss(reader, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for kind, (logits, weight) in enumerate(zip(label_logits(reader, views), LOSS_WEIGHTS.values())):
        class_weight = torch.ones(logits.shape[-1])
        if kind in (0, 3):  # digits and counts: most cells have none
            class_weight[0] = EMPTY_CELL_WEIGHT
        total = total + weight * F.cross_entropy(logits.flatten(0, 1), labels[:, kind].flatten(), weight=class_weight)
    return total


@torch.no_grad()
def reader_accuracy(reader, views, labels, is_global, batch: int = 128) -> dict:
    """Held-out accuracy: the digit at label cells, the colour at shape cells, the count at the global views'
    top-left cells (the number of shapes in the image)."""
    logits = [torch.cat(parts) for parts in zip(*(
        label_logits(reader, views[start:start + batch]) for start in range(0, len(views), batch)))]
    digit, color, _, count = (part.argmax(-1) for part in logits)
    digits, colors = labels[:, 0] > 0, labels[:, 1] > 0
    return {
        "digit": (digit[digits] == labels[:, 0][digits]).float().mean().item(),
        "color": (color[colors] == labels[:, 1][colors]).float().mean().item(),
        "global count": (count[is_global, 0] == labels[is_global, 3, 0]).float().mean().item(),
    }


@torch.no_grad()
def reader_columns(model, tokenizer, share: float = READER_SHARE) -> torch.Tensor:
    """`[hidden, C]` projector columns for the reader: each label channel maps to its word's LayerNorm-normalised
    input embedding (centred within its kind, so that a kind's logits add its winning word and not their common
    offset), scaled so that a confident cell adds `share` times the size of a LayerNorm-normalised vector (the
    size `init_projector` gives the DINOv2 part before the projector's LayerNorm)."""
    from .init_projector import word_embedding

    hidden = model.config.text_config.hidden_size
    columns = torch.zeros(hidden, model.config.convnext_config.hidden_sizes[-1])
    for (first, last), words in zip(LABEL_CHANNELS.values(), label_words().values()):
        kind = torch.stack([
            torch.zeros(hidden) if word is None
            else F.layer_norm(word_embedding(model, tokenizer, word).float(), (hidden,)) for word in words], dim=1)
        columns[:, first:last] = kind - kind.mean(dim=1, keepdim=True)
    return columns * share / CONFIDENT_LOGIT


def reader_optimizer(reader, learning_rate: float, steps: int):
    """`(AdamW, schedule)` of a reader's pretraining: linear warmup over a tenth of `steps` (at most 100), then a
    cosine decay to zero at `steps`."""
    optimizer = torch.optim.AdamW(reader.parameters(), lr=learning_rate, weight_decay=0.05)
    warmup = max(1, min(100, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    return optimizer, schedule


def fit_reader(reader, loss_of, examples: tuple, steps: int, batch: int, learning_rate: float, seed: int, desc: str):
    """Train `reader` for `steps` steps of `batch` examples drawn at random from `examples` (tensors indexed alike),
    minimising `loss_of(reader, *chosen)` with `reader_optimizer`. Returns the start time (for `pretrain_report`)."""
    optimizer, schedule = reader_optimizer(reader, learning_rate, steps)
    generator = torch.Generator().manual_seed(seed)
    reader.train()
    started = time.time()
    for _ in tqdm(range(steps), desc=desc, unit="step"):
        chosen = torch.randint(len(examples[0]), (batch,), generator=generator)
        loss = loss_of(reader, *(tensor[chosen] for tensor in examples))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    reader.eval()
    return started


def pretrain_parser(doc: str, model_help: str, images: int, steps: int, batch: int, learning_rate: float):
    """The command line the reader pretrainings share: MODEL, --images, --steps, --batch, --learning-rate."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model", type=Path, help=model_help)
    parser.add_argument("--images", type=int, default=images, help="synthetic training images")
    parser.add_argument("--steps", type=int, default=steps, help="training steps of --batch views")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    return parser


def print_report(parser: argparse.ArgumentParser, run) -> None:
    """Run a pretraining (`run()` returns its report) and print the report, or exit with one error line."""
    try:
        report = run()
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for key, value in report.items():
        print(f"{key}: {value}")


def pretrain_report(views: int, steps: int, started: float, heldout: dict) -> dict:
    """What a reader's pretraining prints at its end: its size, its minutes and its held-out figures (rounded)."""
    return {"train views": views, "steps": steps, "minutes": round((time.time() - started) / 60, 1),
            **{f"held-out {name}": round(value, 4) for name, value in heldout.items()}}


def pretrain(model_dir: Path, images: int = 6000, steps: int = 1400, batch: int = 64, learning_rate: float = 2e-3,
             seed: int = 0) -> dict:
    """Train a fresh ConvNeXt reader for `model_dir`, point the projector's ConvNeXt columns at its label words
    (see the module docstring) and save the model in place."""
    from transformers import ConvNextModel

    torch.manual_seed(seed)
    model_dir, model, processor = load_in_place(model_dir)
    if model.model.convnext is None:
        raise ValueError(f"{model_dir} has no ConvNeXt expert to pretrain.")
    train = reader_examples(model, processor, images, seed=seed + 4, split="train")
    heldout = reader_examples(model, processor, max(images // 30, 10), seed=seed + 5, split="heldout")
    reader = model.model.convnext
    reader.model = ConvNextModel(reader.model.config)  # fresh: it learns to read from the dense labels
    started = fit_reader(reader, reader_loss, train[:2], steps, batch, learning_rate, seed, "reader")
    projector = model.model.visual_projector.linear
    with torch.no_grad():
        projector.weight[:, :reader.model.config.hidden_sizes[-1]] = reader_columns(model, processor.tokenizer)
    report = pretrain_report(len(train[0]), steps, started, reader_accuracy(reader, *heldout))
    save_in_place(model, processor, model_dir)
    return report


def main(argv=None) -> None:
    parser = pretrain_parser(__doc__, "a demo model folder (`python -m sphinx_x.demo base`)", 6000, 1400, 64, 2e-3)
    args = parser.parse_args(argv)
    print_report(parser, lambda: pretrain(args.model, args.images, args.steps, args.batch, args.learning_rate))


if __name__ == "__main__":
    main()
