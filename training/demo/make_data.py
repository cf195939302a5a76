"""Write the demo model's synthetic training (warm-up and main) and held-out data (deterministic) as parquet files.

    python -m sphinx_x.training.demo.make_data data/demo --scale 4
"""

import argparse
import signal
from pathlib import Path

from ..synthetic.dataset import build_dataset, make_mixture


# The evaluated skills (Set-of-Mark colours, 4-character codes, grounding) dominate; shape questions and words keep
# the answers varied. Set-of-Mark and grounding images carry up to TURNS questions each: the encoders then get
# several answers' worth of gradient per encoded image, which is what makes a from-scratch CPU run affordable.
TRAIN_SIZES = {"som_color": 14000, "ocr_code": 14000, "grounding_rec": 12000, "som_shape": 3000, "ocr_word": 3000}
TURNS = 4
# Training scenes start at one shape: there every image position shows the answer's colour, so the language model
# learns to read the image before it must find one mark among six (held-out scenes keep 2-6 shapes).
TRAIN_SHAPE_COUNT = (1, 6)
# Images are drawn at the demo's 256-px canvas: no downscaling blurs the 1-2 px strokes of marks and letters (drawn
# at 384 px and shrunk, mark digits come out 6-12 px tall instead of 9-19, and a ConvNeXt learns them more slowly).
MAX_SIDE = 256
HELDOUT_SIZES = {"som_color": 200, "ocr_code": 200, "grounding_rec": 200}
# The warm-up stage (recipe `sphinx-x-demo-warmup.yaml`): one-shape colour questions, one per image. There the
# colour is all over the image, and reading it is the only way to lower the loss; a from-scratch model learns to look
# at the image there (37/48 held-out after 400 steps), where on the full mixture, or on one-shape scenes of all three
# tasks, it answered every question alike after 500 and 800 steps.
WARMUP_SIZES = {"som_color": 3000}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for train.parquet, warmup.parquet and heldout.parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=MAX_SIDE, help="longest image side")
    parser.add_argument("--scale", type=int, default=1,
                        help="train rows per task times this (the shipped model: 4); the held-out rows are the same")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill removes the partial file, as Ctrl-C does
    train_sizes = {task: count * args.scale for task, count in TRAIN_SIZES.items()}
    splits = make_mixture(args.seed, train_sizes, HELDOUT_SIZES, max_side=args.max_side, turns=TURNS,
                          train_shape_count=TRAIN_SHAPE_COUNT)
    args.out.mkdir(parents=True, exist_ok=True)
    splits["warmup"] = build_dataset(WARMUP_SIZES, seed=args.seed, split="train", max_side=args.max_side,
                                     shuffle=True, shape_count=(1, 1))
    for name, split in splits.items():
        path, partial = args.out / f"{name}.parquet", args.out / f".{name}.parquet.partial"
        try:  # an interrupted run must not leave a truncated file where the recipes read
            split.to_parquet(partial)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        print(f"{name}: {len(split)} rows -> {path}")


if __name__ == "__main__":
    main()
