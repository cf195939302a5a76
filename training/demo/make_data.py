"""Write the demo model's synthetic training and held-out data (deterministic) as parquet files.

    python -m sphinx_x.training.demo.make_data data/demo
"""

import argparse
from pathlib import Path

from ..synthetic.dataset import make_mixture


# The evaluated skills (Set-of-Mark colours, 4-character codes, grounding) dominate; the other synthetic tasks keep
# the answers varied.
TRAIN_SIZES = {"som_color": 12000, "ocr_code": 12000, "grounding_rec": 12000, "set_of_mark": 2000, "ocr": 2000}
HELDOUT_SIZES = {"som_color": 200, "ocr_code": 200, "grounding_rec": 200}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for train.parquet and heldout.parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=512)
    args = parser.parse_args(argv)
    splits = make_mixture(args.seed, TRAIN_SIZES, HELDOUT_SIZES, max_side=args.max_side)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        split.to_parquet(args.out / f"{name}.parquet")
        print(f"{name}: {len(split)} rows -> {args.out / f'{name}.parquet'}")


if __name__ == "__main__":
    main()
