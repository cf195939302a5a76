"""Linear probes: what a SPHINX-X model's frozen DINOv2 tokens carry about the demo's synthetic images.

    python -m sphinx_x.training.demo.probe_encoder MODEL [--train 300] [--heldout 100]

MODEL is a SPHINX-X folder (e.g. the untrained demo model of `python -m sphinx_x.demo base`). Images go through the
model's own processor (canvas, tiles) and DINOv2 tile views, exactly as the model sees them. For each fact, a
logistic-regression probe is fitted on the tokens of training images and scored on held-out ones:

- colour and shape of a shape (the token under its centre, single-shape scenes);
- side of the image a single shape is on, left or right (from the mean of the four tiles' global tokens);
- the digit of a Set-of-Mark label (the token under the mark);
- a character of a 4-character code (the token under the character's estimated centre).
"""

import argparse

import torch
from tqdm import tqdm


def tile_tokens(model, processor, image) -> tuple[torch.Tensor, float]:
    """`([2g, 2g, C] grid of the four tiles' patch tokens, [C] mean of their CLS tokens), pixels per canvas pixel`
    for a 2x2 canvas; the image sits at the top-left, scaled by the returned factor."""
    config = model.config
    inputs = processor.image_processor(image, return_tensors="pt")
    tile, (rows, cols) = config.tile_size, config.image_grid
    every_view = torch.ones(1, 1 + rows * cols, dtype=torch.bool)
    # The tile views as the model cuts them for DINOv2 (the global view first, dropped here).
    tiles = model.model.encoder_views(inputs["pixel_values"], config.dinov2_config.image_size, every_view)[1:]
    with torch.inference_mode():
        tokens = model.model.dinov2(tiles).last_hidden_state  # [4, 1 + g*g, C]
    grid = int((tokens.shape[1] - 1) ** 0.5)
    patches = tokens[:, 1:].reshape(rows, cols, grid, grid, -1).permute(0, 2, 1, 3, 4).reshape(rows * grid,
                                                                                               cols * grid, -1)
    return patches, tokens[:, 0].mean(dim=0), rows * tile / max(image.size)


def token_at(patches: torch.Tensor, x: float, y: float, patch: int) -> torch.Tensor:
    row, col = min(int(y // patch), patches.shape[0] - 1), min(int(x // patch), patches.shape[1] - 1)
    return patches[row, col]


def examples(model, processor, fact: str, split: str, count: int):
    """`(features [N, C], labels [N])` of `fact` on `count` images of `split`."""
    from ..synthetic.dataset import generate_sample
    from .make_data import MAX_SIDE

    patch = model.config.dinov2_config.patch_size
    task = {"colour": "shape_color", "shape": "shape_kind", "side": "shape_side", "mark digit": "som_color",
            "code character": "ocr_code"}[fact]
    features, labels = [], []
    for index in tqdm(range(count), desc=f"{fact} ({split})", unit="image", leave=False):
        sample = generate_sample(task, index, split=split, max_side=MAX_SIDE)
        patches, global_token, scale = tile_tokens(model, processor, sample.image)
        for drawn in sample.objects:
            x1, y1, x2, y2 = (value * scale for value in drawn["box"])
            if fact in ("colour", "shape", "mark digit"):
                features.append(token_at(patches, (x1 + x2) / 2, (y1 + y2) / 2, patch))
                labels.append({"colour": drawn["color"], "shape": drawn["shape"], "mark digit": drawn["mark"]}[fact])
            elif fact == "side":
                features.append(global_token)
                labels.append(sample.answer)
            else:  # the code is the end of the text line: its characters take the last 4 of its even slots
                text = drawn["text"]
                for offset, character in enumerate(text[-4:], start=len(text) - 4):
                    x = x1 + (x2 - x1) * (offset + 0.5) / len(text)
                    features.append(token_at(patches, x, (y1 + y2) / 2, patch))
                    labels.append(character)
    return torch.stack(features).float(), labels


def probe(train, heldout, steps: int = 500) -> dict:
    """Fit a linear classifier on `train`, score it on `heldout` (labels unseen in training count as wrong)."""
    (x_train, y_train), (x_test, y_test) = train, heldout
    classes = sorted(set(y_train), key=str)
    index = {label: i for i, label in enumerate(classes)}
    targets = torch.tensor([index[label] for label in y_train])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    weight = torch.zeros(x_train.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x_train @ weight + bias, targets) + 1e-3 * weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (x_test @ weight + bias).argmax(1).tolist()
    correct = sum(classes[p] == label for p, label in zip(predicted, y_test))
    majority = max(classes, key=lambda label: y_train.count(label))
    return {"heldout": correct / len(y_test), "majority": sum(label == majority for label in y_test) / len(y_test),
            "train_items": len(y_train), "heldout_items": len(y_test)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a SPHINX-X folder with a DINOv2 expert and a 2x2 canvas")
    parser.add_argument("--train", type=int, default=300, help="training images per fact")
    parser.add_argument("--heldout", type=int, default=100, help="held-out images per fact")
    args = parser.parse_args(argv)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import sphinx_x  # noqa: F401  (registers the model with the Auto classes)

    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    print("| fact | held-out accuracy | majority class | items (train / held-out) |")
    print("| --- | ---: | ---: | ---: |")
    for fact in ("colour", "shape", "side", "mark digit", "code character"):
        result = probe(examples(model, processor, fact, "train", args.train),
                       examples(model, processor, fact, "heldout", args.heldout))
        print(f"| {fact} | {100 * result['heldout']:.1f} % | {100 * result['majority']:.1f} % | "
              f"{result['train_items']} / {result['heldout_items']} |", flush=True)


if __name__ == "__main__":
    main()
