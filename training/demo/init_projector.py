"""Start the demo's visual projector where the LLM can read it: each image position near the word embeddings of
what lies under it.

    python -m sphinx_x.training.demo.init_projector data/demo/base [--images 300]

A fresh projector maps the frozen DINOv2 tokens to arbitrary vectors, and a small LLM needs thousands of
conversations before it finds the colour of a shape among them (the first CPU run: 1,280 conversations, answers still
from the training priors). This step fits the projector's DINOv2 columns by ridge regression instead: on synthetic
training images, the token over a shape is mapped to the LLM's embeddings of its colour and shape words (and of its
Set-of-Mark digit near the centre), the token over a character to that character, any other token to "background".
The ConvNeXt columns start at zero and the LayerNorm at the embeddings' scale, so an image arrives as a grid of
familiar words and one-stage training starts from there. The model folder is rewritten in place (safely: a temporary
folder, then a rename, as the converters write).
"""

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from ...conversion.common import atomic_output_folder


TASKS = ("shape_color", "count", "som_color", "ocr_code", "ocr_word")
BACKGROUND = "background"
MARK_CORE = 0.3  # tokens this close to a shape's centre (fraction of its box) also carry its Set-of-Mark digit


def word_embedding(model, tokenizer, word: str) -> torch.Tensor:
    """`[hidden]` mean input embedding of the tokens of `word` as an answer writes it (no leading space)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return model.get_input_embeddings().weight[ids].mean(0)


def token_regions(config) -> list[tuple[float, float, float]]:
    """Per view, in the model's order (global view, then tiles row-major): `(left, top, cell)` in canvas pixels."""
    rows, cols = config.image_grid
    tile = config.tile_size
    grid = config.dinov2_config.image_size // config.dinov2_config.patch_size
    regions = [(0.0, 0.0, rows * tile / grid)]  # the demo's canvas is square: the global view covers all of it
    regions += [(col * tile, row * tile, tile / grid) for row in range(rows) for col in range(cols)]
    return regions


def token_words(objects: list[dict], scale: float, x: float, y: float) -> list[str]:
    """The words for the canvas point `(x, y)`: what the drawn objects put there (boxes in image pixels)."""
    for drawn in objects:
        x1, y1, x2, y2 = (value * scale for value in drawn["box"])
        if not (x1 <= x < x2 and y1 <= y < y2):
            continue
        if drawn.get("text"):  # a text line: its characters in even slots
            character = drawn["text"][min(int((x - x1) / (x2 - x1) * len(drawn["text"])), len(drawn["text"]) - 1)]
            return [character] if character.strip() else [BACKGROUND]
        words = [drawn["color"], drawn["shape"]]
        near_centre = abs(x - (x1 + x2) / 2) < MARK_CORE * (x2 - x1) and abs(y - (y1 + y2) / 2) < MARK_CORE * (y2 - y1)
        if drawn.get("mark") and near_centre:
            words.append(str(drawn["mark"]))
        return words
    return [BACKGROUND]


@torch.inference_mode()
def examples(model, processor, images: int, seed: int = 1):
    """`(DINOv2 tokens [N, C], target embeddings [N, hidden], words)` over every view token of `images` images."""
    from ..synthetic.dataset import generate_sample
    from .make_data import MAX_SIDE

    config = model.config
    embeddings, features, targets, labels = {}, [], [], []
    regions = token_regions(config)
    grid = config.dinov2_config.image_size // config.dinov2_config.patch_size
    for index in tqdm(range(images), desc="projector targets", unit="image"):
        sample = generate_sample(TASKS[index % len(TASKS)], index, seed=seed, split="train", max_side=MAX_SIDE)
        inputs = processor.image_processor(sample.image, return_tensors="pt")
        pixel_values, tile_mask = inputs["pixel_values"], inputs["image_tile_mask"].bool()
        view_mask = torch.cat([tile_mask.new_ones(1, 1), tile_mask], dim=1)
        views = model.model.encoder_views(pixel_values, config.dinov2_config.image_size, view_mask)
        tokens = model.model.dinov2(views).last_hidden_state[:, 1:]  # [kept views, g*g, C]
        scale = config.tile_size * config.image_grid[0] / max(sample.image.size)
        kept = [region for region, keep in zip(regions, view_mask[0].tolist()) if keep]
        for view, (left, top, cell) in zip(tokens, kept):
            for position, feature in enumerate(view):
                row, col = divmod(position, grid)
                words = tuple(token_words(sample.objects, scale, left + (col + 0.5) * cell, top + (row + 0.5) * cell))
                if words not in embeddings:
                    vectors = [word_embedding(model, processor.tokenizer, word) for word in words]
                    embeddings[words] = torch.stack(vectors).mean(0)
                features.append(feature)
                targets.append(embeddings[words])
                labels.append(words)
    return torch.stack(features).float(), torch.stack(targets).float(), labels


def fit(features: torch.Tensor, targets: torch.Tensor, ridge: float = 1.0):
    """Ridge regression of LayerNorm-normalised targets on standardised features: `(weight [hidden, C], bias
    [hidden], scale)` with `LayerNorm(features @ weight.T + bias) * scale` close to the targets."""
    normalised = torch.nn.functional.layer_norm(targets, targets.shape[-1:])
    scale = (targets - targets.mean(-1, keepdim=True)).square().mean(-1).sqrt().mean()
    inputs = torch.cat([features, torch.ones(len(features), 1)], dim=1)
    gram = inputs.T @ inputs + ridge * torch.eye(inputs.shape[1])
    solution = torch.linalg.solve(gram, inputs.T @ normalised)  # [C + 1, hidden]
    return solution[:-1].T.contiguous(), solution[-1].contiguous(), float(scale)


def word_accuracy(predicted: torch.Tensor, labels: list[tuple], vocabulary: dict) -> float:
    """Share of tokens whose prediction is nearest (cosine) to the embedding of their own word combination."""
    keys = list(vocabulary)
    table = torch.nn.functional.normalize(torch.stack([vocabulary[key] for key in keys]), dim=-1)
    nearest = (torch.nn.functional.normalize(predicted, dim=-1) @ table.T).argmax(-1).tolist()
    return sum(keys[i] == label for i, label in zip(nearest, labels)) / len(labels)


def load_in_place(model_dir: Path):
    """`(folder, model, processor)` of the SPHINX-X folder `model_dir`, float32, in eval mode; `folder` is resolved, so
    that `save_in_place` replaces the folder a link points to."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import sphinx_x  # noqa: F401  (registers the model with the Auto classes)

    folder = Path(model_dir).resolve()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no such model folder (it needs a config.json). Pass a demo model "
                                "folder, e.g. from `python -m sphinx_x.demo base DST`.")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, model, AutoProcessor.from_pretrained(folder)


def save_in_place(model, processor, model_dir: Path) -> None:
    """Rewrite the model folder `model_dir` with `model` and `processor` (a temporary folder, then a rename)."""
    with atomic_output_folder(model_dir, overwrite=True) as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)


def initialise(model_dir: Path, images: int = 300) -> dict:
    """Fit the projector of the SPHINX-X folder `model_dir` (see the module docstring) and save it in place."""
    model_dir, model, processor = load_in_place(model_dir)
    train_x, train_y, _ = examples(model, processor, images)
    test_x, test_y, test_labels = examples(model, processor, max(images // 5, 10), seed=2)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    weight, bias, scale = fit((train_x - mean) / std, train_y)

    projector = model.model.visual_projector
    dinov2_width = model.config.dinov2_config.hidden_size
    with torch.no_grad():
        projector.linear.weight.zero_()
        projector.linear.weight[:, -dinov2_width:] = weight / std  # DINOv2 comes last in the concatenation
        projector.linear.bias.copy_(bias - (weight / std) @ mean)
        projector.norm.weight.fill_(scale)
        projector.norm.bias.zero_()
        padded = torch.cat([torch.zeros(len(test_x), projector.linear.in_features - dinov2_width), test_x], dim=1)
        predicted = projector(padded)
    vocabulary = {}
    for label, target in zip(test_labels, test_y):
        vocabulary.setdefault(label, target)
    objects = [i for i, label in enumerate(test_labels) if label != (BACKGROUND,)]
    report = {
        "tokens": len(train_x),
        "heldout_word_accuracy": word_accuracy(predicted, test_labels, vocabulary),
        "heldout_object_word_accuracy": word_accuracy(predicted[objects], [test_labels[i] for i in objects],
                                                      vocabulary),
        "cosine": torch.nn.functional.cosine_similarity(predicted, test_y, dim=-1).mean().item(),
        "scale": scale,
    }
    save_in_place(model, processor, model_dir)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the untrained demo model folder (`python -m sphinx_x.demo base`)")
    parser.add_argument("--images", type=int, default=300, help="synthetic training images to fit on")
    args = parser.parse_args(argv)
    for key, value in initialise(args.model, args.images).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
