"""Plot the training loss recorded in the `trainer_state.json` of one or more consecutive runs as a PNG (PIL only).

    python -m sphinx_x.training.demo.plot_loss runs/sphinx-x-demo-warmup/trainer_state.json \
        runs/sphinx-x-demo/trainer_state.json docs/demo_training_loss.png
"""

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw


WIDTH, HEIGHT, MARGIN = 800, 480, 60


def plot_loss(steps: list[int], losses: list[float], title: str, stage_starts: list[int] = ()) -> Image.Image:
    """A line plot of `losses` against `steps`, with labelled axes and a grey line where each later stage starts. The
    step axis starts at the last multiple of 25 before the first step (0 for a run from scratch, where a resumed run
    starts), so it is never empty."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    low, high = 0.0, max(losses) * 1.05
    first, last = (min(steps) - 1) // 25 * 25, max(steps)

    def point(step, loss):
        x = MARGIN + (WIDTH - 2 * MARGIN) * (step - first) / (last - first)
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (loss - low) / (high - low)
        return x, y

    draw.line([(MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN), (WIDTH - MARGIN, HEIGHT - MARGIN)], fill="black")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        loss = low + fraction * (high - low)
        _, y = point(first, loss)
        draw.line([(MARGIN - 5, y), (MARGIN, y)], fill="black")
        draw.text((8, y - 6), f"{loss:.2f}", fill="black")
        step = round(first + fraction * (last - first))
        x, _ = point(step, low)
        draw.line([(x, HEIGHT - MARGIN), (x, HEIGHT - MARGIN + 5)], fill="black")
        draw.text((x - 12, HEIGHT - MARGIN + 10), str(step), fill="black")
    for step in stage_starts:
        draw.line([point(step, low), point(step, high)], fill=(160, 160, 160))
    draw.line([point(s, v) for s, v in zip(steps, losses)], fill=(31, 119, 180), width=2)
    draw.text((WIDTH // 2 - 20, HEIGHT - 25), "step", fill="black")
    draw.text((MARGIN, 20), title, fill="black")
    return image


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trainer_states", type=Path, nargs="+", help="one per stage, in training order")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    steps, losses, stage_starts, offset = [], [], [], 0
    for trainer_state in args.trainer_states:
        state = json.loads(trainer_state.read_text())
        history = [entry for entry in state["log_history"] if "loss" in entry]
        steps += [offset + entry["step"] for entry in history]
        losses += [float(entry["loss"]) for entry in history]
        offset += state["global_step"]
        stage_starts.append(offset)
    title = f"SPHINX-X demo model: training loss ({len(args.trainer_states)} stage(s), final {losses[-1]:.3f})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_loss(steps, losses, title, stage_starts[:-1]).save(args.out)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
