"""Write the demo model's synthetic training and held-out data (deterministic) as parquet files.

    python -m sphinx_x.training.demo.make_data data/demo
"""

import argparse
import signal
from pathlib import Path

from ..synthetic.dataset import make_mixture


# Every evaluated skill has training data, with Set-of-Mark colours, 4-character codes and grounding weighted up (the
# hardest); words keep the readings varied. Set-of-Mark, grounding and single-shape images carry up to TURNS questions
# each (Set-of-Mark and grounding scenes end with their count): the encoders and the adapter then get several answers'
# worth of gradient per encoded image, which is what makes a CPU run affordable. Text-only chat turns come from
# `text_chat.py`.
TRAIN_SIZES = {"som_color": 3000, "som_shape": 600, "scene": 2400, "grounding_rec": 2400, "ocr_code": 3000,
               "ocr_word": 600}
TURNS = 6
TRAIN_SHAPE_COUNT = (1, 6)
# Images are drawn at the demo's 224-px canvas, so the processor hardly resamples them.
MAX_SIDE = 224
# The held-out table of the README (`sphinx_x.training.demo.evaluate`): one question per image.
HELDOUT_SIZES = {"som_color": 200, "shape_color": 100, "shape_kind": 100, "count": 200, "grounding_rec": 200,
                 "ocr_code": 200}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for train.parquet and heldout.parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=MAX_SIDE, help="longest image side")
    parser.add_argument("--scale", type=int, default=1,
                        help="train rows per task times this; the held-out rows are the same")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill removes the partial file, as Ctrl-C does
    train_sizes = {task: count * args.scale for task, count in TRAIN_SIZES.items()}
    splits = make_mixture(args.seed, train_sizes, HELDOUT_SIZES, max_side=args.max_side, turns=TURNS,
                          train_shape_count=TRAIN_SHAPE_COUNT)
    args.out.mkdir(parents=True, exist_ok=True)
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
