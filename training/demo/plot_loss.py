"""Plot the training loss recorded in a Trainer checkpoint's `trainer_state.json` as a PNG (PIL only).

    python -m sphinx_x.training.demo.plot_loss runs/sphinx-x-demo/trainer_state.json docs/demo_training_loss.png
"""

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw


WIDTH, HEIGHT, MARGIN = 800, 480, 60


def plot_loss(steps: list[int], losses: list[float], title: str) -> Image.Image:
    """A line plot of `losses` against `steps`, with labelled axes."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    low, high = 0.0, max(losses) * 1.05
    last = max(steps)

    def point(step, loss):
        x = MARGIN + (WIDTH - 2 * MARGIN) * step / last
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (loss - low) / (high - low)
        return x, y

    draw.line([(MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN), (WIDTH - MARGIN, HEIGHT - MARGIN)], fill="black")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        loss = low + fraction * (high - low)
        _, y = point(0, loss)
        draw.line([(MARGIN - 5, y), (MARGIN, y)], fill="black")
        draw.text((8, y - 6), f"{loss:.2f}", fill="black")
        step = round(fraction * last)
        x, _ = point(step, low)
        draw.line([(x, HEIGHT - MARGIN), (x, HEIGHT - MARGIN + 5)], fill="black")
        draw.text((x - 12, HEIGHT - MARGIN + 10), str(step), fill="black")
    draw.line([point(s, v) for s, v in zip(steps, losses)], fill=(31, 119, 180), width=2)
    draw.text((WIDTH // 2 - 20, HEIGHT - 25), "step", fill="black")
    draw.text((MARGIN, 20), title, fill="black")
    return image


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trainer_state", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    history = [entry for entry in json.loads(args.trainer_state.read_text())["log_history"] if "loss" in entry]
    steps, losses = [entry["step"] for entry in history], [float(entry["loss"]) for entry in history]
    title = f"SPHINX-X demo model: training loss ({len(steps)} logs, final {losses[-1]:.3f})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_loss(steps, losses, title).save(args.out)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
