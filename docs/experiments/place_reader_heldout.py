"""How often a demo model's place reader marks the tile cells of the held-out grounding targets' centres.

    python docs/experiments/place_reader_heldout.py MODEL [--heldout data/demo/heldout.parquet]

MODEL is a complete demo model folder with a place reader (e.g. `python -m sphinx_x.demo path`). For each held-out
grounding question it runs the ConvNeXt and the place reader on the kept tile views and counts the targets whose
centre cell is marked (p > 0.5), and the images whose marked cells are exactly the centre cells of all their shapes.
"""

import argparse
import io

import pandas as pd
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import sphinx_x  # noqa: F401  (registers the model with the Auto classes)
from sphinx_x.training.demo.pretrain_place_reader import centre_labels


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--heldout", default="data/demo/heldout.parquet")
    args = parser.parse_args()
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    config = model.config
    rows = pd.read_parquet(args.heldout).query("task == 'grounding_rec'")
    found = exact = 0
    for _, row in rows.iterrows():
        image = Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")
        inputs = processor.image_processor(image, return_tensors="pt")
        tiles_only = torch.cat([torch.zeros(1, 1, dtype=torch.bool), inputs["image_tile_mask"].bool()], dim=1)
        views = model.model.encoder_views(inputs["pixel_values"], config.convnext_config.image_size, tiles_only)
        marked = model.model.place_reader(model.model.convnext(views).last_hidden_state).sigmoid() > 0.5
        scale = config.tile_size * config.image_grid[0] / max(image.size)
        tile_mask = tiles_only[0, 1:].tolist()
        target = centre_labels(config, [list(row["target_box"])], scale, tile_mask) > 0
        boxes = [list(drawn["box"]) for drawn in row["objects"] if drawn["shape"]]
        centres = centre_labels(config, boxes, scale, tile_mask) > 0
        found += bool(marked[target].all())
        exact += bool((marked == centres).all())
    print(f"targets' centre cells marked: {found}/{len(rows)}; images read exactly: {exact}/{len(rows)}")


if __name__ == "__main__":
    main()
