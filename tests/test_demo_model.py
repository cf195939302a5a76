"""The embedded demo model: shipped complete and small, used by `sphinx-x chat` without `--model` (the README's first
command), and answering held-out synthetic questions (images no training sample used) as well as it did when
shipped."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sphinx_x.cli import DEMO_MODEL
from sphinx_x.training.demo.evaluate import evaluate
from sphinx_x.training.demo.make_data import MAX_SIDE
from sphinx_x.training.synthetic.dataset import build_dataset, generate_sample


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "one_shape.png"
EXAMPLE_QUESTION = "What color is the shape labeled 1?"  # the README's first command
MAX_BYTES = 25 * 2**20
# Floors a little under what the shipped weights score on the first 40 held-out questions of each kind (19/40,
# 11/40, 35/40; the 4-character codes score 0 and have no floor). Issue 4's targets (90 / 50 / 60 % on 200) are
# not met yet: the README's table has the full figures.
FLOORS = {"som_color": 0.4, "grounding_rec": 0.2}
ONE_SHAPE_FLOOR = 0.8


def test_demo_model_is_complete_and_small():
    files = {path.name for path in DEMO_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "processor_config.json",
            "tokenizer.json", "chat_template.jinja", "README.md"} <= files
    assert sum(path.stat().st_size for path in DEMO_MODEL.glob("*.safetensors")) <= MAX_BYTES


def test_readme_example_is_a_heldout_sample():
    # The README's first command asks about examples/one_shape.png: the held-out one-shape sample 7, answer "blue".
    sample = generate_sample("som_color", 7, split="heldout", max_side=MAX_SIDE, shape_count=(1, 1))
    assert (sample.question, sample.answer) == (EXAMPLE_QUESTION, "blue")
    assert np.array_equal(np.asarray(Image.open(EXAMPLE).convert("RGB")), np.asarray(sample.image))


def test_chat_command_answers_with_the_demo_model():
    command = shutil.which("sphinx-x", path=str(Path(sys.executable).parent)) or shutil.which("sphinx-x")
    result = subprocess.run([command, "chat", "--image", str(EXAMPLE), EXAMPLE_QUESTION],
                            capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "blue", (result.stdout, result.stderr[-2000:])


def test_demo_model_keeps_its_heldout_accuracy(tmp_path):
    heldout = build_dataset({task: 40 for task in FLOORS}, split="heldout", max_side=MAX_SIDE)
    one_shape = build_dataset({"som_color": 40}, split="heldout", max_side=MAX_SIDE, shape_count=(1, 1))
    heldout.to_parquet(tmp_path / "heldout.parquet")
    one_shape.to_parquet(tmp_path / "one_shape.parquet")
    results = evaluate(str(DEMO_MODEL), str(tmp_path / "heldout.parquet"))
    for task, floor in FLOORS.items():
        assert results[task]["accuracy"] >= floor, (task, results[task])
    one_shape_results = evaluate(str(DEMO_MODEL), str(tmp_path / "one_shape.parquet"))
    assert one_shape_results["som_color"]["accuracy"] >= ONE_SHAPE_FLOOR, one_shape_results
