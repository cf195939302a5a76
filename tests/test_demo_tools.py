"""The demo model's tools: its data at a scale, held-out scoring, evaluation end to end, and the loss plot."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from sphinx_x.training.demo import make_data
from sphinx_x.training.demo.evaluate import evaluate, score
from sphinx_x.training.demo.plot_loss import main as plot_loss_main
from sphinx_x.training.demo.text_chat import HELDOUT, chat_answers, keyword_hit, training_prompts
from sphinx_x.training.synthetic.dataset import make_mixture

from conftest import make_tiny_model_and_processor


@pytest.mark.parametrize(
    "task, prediction, answer, correct",
    [
        ("som_color", " Red", "red", True),
        ("som_color", "blue", "red", False),
        ("count", "3", "3", True),
        ("count", "3 shapes", "3", False),
        ("ocr_code", "UJNW", "UJNW", True),
        ("ocr_code", "UJN", "UJNW", False),
        ("grounding_rec", "[0.10,0.10,0.50,0.50]", "[0.12,0.10,0.50,0.52]", True),
        ("grounding_rec", "[0.60,0.60,0.90,0.90]", "[0.12,0.10,0.50,0.52]", False),
        ("grounding_rec", "no box", "[0.12,0.10,0.50,0.52]", False),
    ],
)
def test_scoring_rules(task, prediction, answer, correct):
    assert score(task, prediction, answer) is correct


def test_evaluation_runs_end_to_end(tmp_path):
    model, processor = make_tiny_model_and_processor()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    heldout = make_mixture(0, {"ocr_code": 1}, {"som_color": 2, "ocr_code": 2, "grounding_rec": 2})["heldout"]
    heldout.to_parquet(tmp_path / "heldout.parquet")
    results = evaluate(str(tmp_path / "model"), str(tmp_path / "heldout.parquet"), per_task=1, batch_size=2)
    assert {task: counts["total"] for task, counts in results.items()} == {"som_color": 1, "ocr_code": 1,
                                                                          "grounding_rec": 1}
    assert all(0.0 <= counts["accuracy"] <= 1.0 for counts in results.values())


def test_text_check_keywords_and_training_prompts():
    assert keyword_hit("The capital of France is Paris.", ["paris"])
    assert not keyword_hit("I do not know.", ["paris"])
    assert keyword_hit("2 plus 3 is 5.", ["5", "five"]) and not keyword_hit("It is 15.", ["5"])
    assert keyword_hit("APPLE", ["APPLE"]) and not keyword_hit("apple", ["APPLE"])
    prompts = training_prompts(200)
    assert len(set(prompts)) == 200 and not set(prompts) & {prompt for prompt, _ in HELDOUT}
    assert training_prompts(200) == prompts  # seeded


def test_loss_plot_of_two_stages(tmp_path):
    states = []
    for stage, scale in enumerate((5.0, 1.0)):
        history = [{"step": step, "loss": scale / step} for step in range(10, 110, 10)]
        state = {"global_step": 100, "log_history": history + [{"step": 100}]}  # the run summary has no loss
        states.append(tmp_path / f"stage{stage}.json")
        states[-1].write_text(json.dumps(state))
    plot_loss_main([*map(str, states), str(tmp_path / "loss.png")])
    image = PIL.Image.open(tmp_path / "loss.png")
    assert image.size == (800, 480)
    pixels = np.asarray(image.convert("RGB"))
    curve = np.nonzero((pixels == (31, 119, 180)).all(axis=-1))[1]
    assert curve.min() < 100 and curve.max() > 700  # both stages are on one axis of 200 steps
    stage_line = np.nonzero((pixels == (160, 160, 160)).all(axis=-1))[1]
    assert abs(np.median(stage_line) - 400) <= 2  # where stage 2 starts, half-way


def test_make_data_scale_multiplies_the_train_rows_only(tmp_path, monkeypatch):
    monkeypatch.setattr(make_data, "TRAIN_SIZES", {"som_color": 3, "ocr_code": 2})
    monkeypatch.setattr(make_data, "HELDOUT_SIZES", {"som_color": 2})
    make_data.main([str(tmp_path / "x1")])
    make_data.main([str(tmp_path / "x2"), "--scale", "2"])
    rows = {name: {scale: pq.read_table(tmp_path / scale / f"{name}.parquet").column("sample_id").to_pylist()
                   for scale in ("x1", "x2")} for name in ("train", "heldout")}
    assert (len(rows["train"]["x1"]), len(rows["train"]["x2"])) == (5, 10)
    assert set(rows["train"]["x1"]) < set(rows["train"]["x2"])  # the same generator, more indices
    assert rows["heldout"]["x1"] == rows["heldout"]["x2"]
    assert sorted(path.name for path in (tmp_path / "x1").iterdir()) == ["heldout.parquet", "train.parquet"]


def test_make_data_interrupted_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(make_data, "TRAIN_SIZES", {"som_color": 2})
    monkeypatch.setattr(make_data, "HELDOUT_SIZES", {"som_color": 2})
    (tmp_path / "train.parquet").write_bytes(b"the previous run's file")
    real_to_parquet = Dataset.to_parquet

    def interrupted(self, path, **kwargs):
        real_to_parquet(self, path, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(Dataset, "to_parquet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_data.main([str(tmp_path)])
    assert [path.name for path in tmp_path.iterdir()] == ["train.parquet"]
    assert (tmp_path / "train.parquet").read_bytes() == b"the previous run's file"


def test_chat_answers_say_which_answers_ended():
    """An answer counts as finished only when generation emitted an end-of-sequence token, not at the budget."""
    model, processor = make_tiny_model_and_processor()
    prompts = ["Say something.", "Say something else, at more length."]
    answers, finished = chat_answers(model, processor, prompts, max_new_tokens=3, batch_size=2)
    assert len(answers) == 2 and finished == [False, False]  # a random model runs to the budget
    model.generation_config.eos_token_id = list(range(model.config.text_config.vocab_size))  # any token ends one
    answers, finished = chat_answers(model, processor, prompts, max_new_tokens=3, batch_size=2)
    assert finished == [True, True]


def test_demo_module_runs_as_a_script_without_warnings():
    """`python -m sphinx_x.demo` (the README's way to build the base) runs the module once: the package does not import
    it first, which made runpy warn."""
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "sphinx_x.demo", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: python -m sphinx_x.demo" in result.stdout, result.stderr[-2000:]
    assert "RuntimeWarning" not in result.stderr


def test_loss_plot_of_a_resumed_run_starts_where_it_resumed(tmp_path):
    history = [{"step": step, "loss": 1.0 / step} for step in range(1110, 1510, 10)]
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"global_step": 1500, "log_history": history}))
    plot_loss_main([str(state), str(tmp_path / "loss.png")])
    pixels = np.asarray(PIL.Image.open(tmp_path / "loss.png").convert("RGB"))
    curve = np.nonzero((pixels == (31, 119, 180)).all(axis=-1))[1]
    assert curve.min() < 100 and curve.max() > 700  # the axis runs from step 1100, not from 0
