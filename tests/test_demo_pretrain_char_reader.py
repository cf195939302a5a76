"""The demo's character reader: its labels (one tile cell per code character, in reading order), its pretraining
(`python -m sphinx_x.training.demo.pretrain_char_reader`) and how it reaches the shipped adapter (`adapter_module`)."""

import json
import random
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_reader_words import CHARACTERS, char_reader_config

import sphinx_x
from sphinx_x import demo
from sphinx_x.presets import DEMO_CODE_CHARACTERS
from sphinx_x.training.demo.adapter_module import put_module
from sphinx_x.training.demo.pretrain_char_reader import (
    IGNORED,
    character_labels,
    code_centres,
    distinct_cells,
    pretrain,
)
from sphinx_x.training.synthetic.ocr import code_sample

from conftest import make_tiny_model_and_processor


def label(character: str) -> int:
    return DEMO_CODE_CHARACTERS.index(character) + 1


@pytest.mark.parametrize(("columns", "cells"), [
    ([1, 3, 4, 6], [1, 3, 4, 6]),  # apart already
    ([2, 2, 3, 3], [2, 3, 4, 5]),  # a character sharing its neighbour's cell moves right ...
    ([5, 6, 7, 7], [4, 5, 6, 7]),  # ... and back left where the tile ends
    (list(range(9)), None),  # more characters than cells
])
def test_distinct_cells_keep_the_order(columns, cells):
    assert distinct_cells(columns, 8) == cells


def test_character_labels_give_each_character_a_cell_of_its_tile():
    config = sphinx_x.SphinxXConfig.from_pretrained(demo.demo_model_path())  # 2x2 tiles of 112 px, 14-px cells
    # "K7QF" on the canvas row y = 30: K and 7 share cell 7 of the top-left tile, Q and F lie in the top-right one.
    centres = [("K", 100.0, 30.0), ("7", 104.0, 30.0), ("Q", 118.0, 30.0), ("F", 131.0, 30.0)]
    labels = character_labels(config, centres, [True] * 5)
    assert labels.shape == (4, 64)  # tile views only
    row = 30 // 14
    assert labels[0, row * 8 + 6] == label("K") and labels[0, row * 8 + 7] == label("7")
    assert labels[1, row * 8 + 0] == label("Q") and labels[1, row * 8 + 1] == label("F")
    assert int((labels > 0).sum()) == 4 and not labels[2:].any()
    # A skipped tile has no view: the labels follow the kept tiles only.
    assert character_labels(config, centres, [True, True, True, False, False]).shape == (2, 64)
    crowded = [(char, 2.0 + index, 30.0) for index, char in enumerate("ABCDEFGHJ")]  # 9 characters in one row
    assert character_labels(config, crowded, [True] * 5)[0, row * 8:(row + 1) * 8].eq(IGNORED).all()


def test_code_centres_lie_on_the_code_in_order():
    for seed in range(20):
        sample = code_sample(random.Random(seed), "train", 224)
        if sample is None:
            continue
        code = sample.details["code"]
        line = next(drawn for drawn in sample.objects if drawn["text"].endswith(code))
        centres = code_centres(sample, 1.0)
        assert "".join(char for char, _, _ in centres) == code
        xs = [x for _, x, _ in centres]
        assert xs == sorted(xs) and line["box"][0] < xs[0] and xs[-1] < line["box"][2]
        assert all(line["box"][1] < y < line["box"][3] for _, _, y in centres)


def test_pretrain_trains_the_character_reader_in_place(tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo.demo_model_path(), folder)
    before = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(folder)
    report = pretrain(folder, images=30, steps=3, batch=8)
    assert set(report) >= {"held-out character", "held-out fired off characters", "held-out codes read at their cells",
                           "held-out codes spelled"}
    after = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(folder)
    assert not torch.equal(after.model.char_reader.head.weight, before.model.char_reader.head.weight)
    torch.testing.assert_close(after.model.convnext.state_dict(), before.model.convnext.state_dict())
    torch.testing.assert_close(after.model.visual_projector.state_dict(), before.model.visual_projector.state_dict())


def test_put_module_ships_a_pretrained_reader_in_the_adapter(tmp_path):
    trained, _ = make_tiny_model_and_processor(char_reader_config=char_reader_config(), reader_words=[CHARACTERS])
    trained.save_pretrained(tmp_path / "model")
    base, _ = make_tiny_model_and_processor(seed=1, char_reader_config=char_reader_config(), reader_words=[CHARACTERS])
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["visual_projector"])
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")

    assert put_module(tmp_path / "adapter", tmp_path / "model", "char_reader") == len(
        trained.model.char_reader.state_dict())
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["char_reader", "visual_projector"]
    fresh, _ = make_tiny_model_and_processor(seed=2, char_reader_config=char_reader_config(), reader_words=[CHARACTERS])
    merged = PeftModel.from_pretrained(fresh, tmp_path / "adapter").merge_and_unload()
    torch.testing.assert_close(merged.model.char_reader.state_dict(), trained.model.char_reader.state_dict())
    with pytest.raises(ValueError, match="no weights under 'model.eyes.'"):
        put_module(tmp_path / "adapter", tmp_path / "model", "eyes")
    with pytest.raises(FileNotFoundError, match="must be a saved LoRA adapter folder"):
        put_module(tmp_path / "missing", tmp_path / "model", "char_reader")
