"""The demo's place reader (`python -m sphinx_x.training.demo.pretrain_place_reader`): a label at the tile cell of
each shape's centre, a fresh head trained on the ConvNeXt's outputs and saved in place, and the words it writes."""

import json
import shutil

import pytest
import torch

import sphinx_x
from sphinx_x import demo
from sphinx_x.presets import DEMO_HALF_SIDE, preset_config
from sphinx_x.training.demo.pretrain_place_reader import centre_labels, pretrain


def test_centre_labels_mark_the_cell_of_each_box_centre_in_its_tile():
    config = preset_config("sphinx-x-demo-places")  # 224-px canvas, 2x2 tiles of 8x8 cells of 14 px
    labels = centre_labels(config, [[20, 20, 48, 48], [140, 150, 200, 224]], 1.0, [True] * 4)
    assert labels.shape == (4, 64) and labels.sum() == 2
    assert labels[0, 2 * 8 + 2] == 1  # centre (34, 34): top-left tile, cell (2, 2)
    assert labels[3, 5 * 8 + 4] == 1  # centre (170, 187): bottom-right tile (offset 112), cell (5, 4)
    # An image half as large fills the canvas at scale 2: the same box's centre (68, 68) is in cell (4, 4).
    assert centre_labels(config, [[20, 20, 48, 48]], 2.0, [True] * 4)[0, 4 * 8 + 4] == 1
    # Skipped tiles are left out: a wide image keeps the top two tiles only.
    assert centre_labels(config, [[140, 20, 168, 48]], 1.0, [True, True, False, False])[1, 2 * 8 + 3] == 1


def test_the_demo_place_words_are_the_decimals_of_a_mean_box_edge():
    words = preset_config("sphinx-x-demo-places").place_words
    tokenizer = sphinx_x.SphinxXProcessor.from_pretrained(demo.demo_model_path()).tokenizer
    names = " zero one two three four five six seven eight nine".split(" ")[1:]
    for runs in (words["column_token_ids"], words["row_token_ids"]):
        assert len(runs) == 16
        for index, run in enumerate(runs):
            edge = max(0.0, (index + 0.5) / 16 - DEMO_HALF_SIDE)
            # One number word per decimal ("0.21" -> " two one"), none of them a digit token a mark or code uses.
            assert tokenizer.decode(run) == "".join(f" {names[int(digit)]}" for digit in f"{edge:.2f}"[2:])
            assert not set(run) & set(tokenizer("0123456789", add_special_tokens=False)["input_ids"])


def test_pretrain_replaces_the_place_reader_in_place(tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo.demo_model_path(), folder)  # the shipped demo is built on the places preset
    assert json.loads((folder / "config.json").read_text())["place_words"] == preset_config(
        "sphinx-x-demo-places").place_words
    before = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(folder).model
    report = pretrain(folder, images=30, steps=3, batch=8)
    assert set(report) >= {"held-out centres found", "held-out marks right", "held-out tiles exact"}
    after = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(folder).model
    assert not torch.equal(after.place_reader.conv.weight, before.place_reader.conv.weight)
    for name, tensor in after.convnext.state_dict().items():  # the ConvNeXt reader it reads stays as it was
        torch.testing.assert_close(tensor, before.convnext.state_dict()[name])
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no temporary folder left behind


def test_a_model_without_place_words_is_refused(tmp_path):
    model = sphinx_x.SphinxXForConditionalGeneration(preset_config("tiny-random"))
    model.save_pretrained(tmp_path)
    sphinx_x.SphinxXProcessor.from_pretrained(demo.demo_model_path()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no place reader: its config needs `place_words`"):
        pretrain(tmp_path, images=2, steps=1)


def test_the_places_preset_is_the_demo_with_a_place_reader():
    plain, places = preset_config("sphinx-x-demo").to_dict(), preset_config("sphinx-x-demo-places").to_dict()
    assert plain.pop("place_words") is None and places.pop("place_words")["hidden_size"] == 64
    assert plain == places
    model = sphinx_x.SphinxXForConditionalGeneration(preset_config("sphinx-x-demo-places"))
    assert sum(parameter.numel() for parameter in model.model.place_reader.parameters()) == 110_721


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: no such model folder"):
        pretrain(tmp_path / "missing", images=2, steps=1)
