"""The demo's reader pretraining (`python -m sphinx_x.training.demo.pretrain_reader`): dense labels per view cell,
Set-of-Mark scenes with every digit, and a fresh ConvNeXt trained and saved in place."""

import random
import shutil

import torch

import sphinx_x
from sphinx_x import demo
from sphinx_x.presets import DEMO_CODE_CHARACTERS, preset_config
from sphinx_x.training.demo.init_projector import word_embedding
from sphinx_x.training.demo.pretrain_reader import (
    LABEL_CHANNELS,
    label_words,
    marked_scene,
    pretrain,
    reader_columns,
    view_labels,
)
from sphinx_x.training.synthetic.scene import COLORS


def test_view_labels_put_each_fact_in_its_cell():
    config = sphinx_x.SphinxXConfig.from_pretrained(demo.demo_model_path())  # 224-px canvas, 2x2 tiles, 8x8 cells
    square = {"box": [20, 20, 48, 48], "shape": "square", "color": "blue", "mark": 5, "text": ""}
    triangle = {"box": [140, 140, 182, 182], "shape": "triangle", "color": "red", "mark": 2, "text": ""}
    labels = view_labels(config, [square, triangle], 1.0, [True] * 5)  # [views, (digit, colour, shape, count), 64]
    assert labels.shape == (5, 4, 64)
    # Tile views have 14-px cells: the square's centre (34, 34) is cell (2, 2) of the top-left tile; the
    # triangle's label sits at its centroid (161, 168), cell (4, 3) of the bottom-right tile (offset 112).
    assert labels[1, 0, 2 * 8 + 2] == 5 and labels[4, 0, 4 * 8 + 3] == 2
    assert (labels[1, 0] > 0).sum() == 1 and (labels[4, 0] > 0).sum() == 1
    assert not labels[0, 0].any()  # the global view's digits are too small to read: no digit labels there
    assert labels[1, 1, 2 * 8 + 2] == list(COLORS).index("blue") + 1
    assert labels[1, 1, 0] == 0 and labels[2, 1].eq(0).all()  # background; the top-right tile holds no shape
    # Count classes are 1 + the number of shapes whose centre is inside; it lives at the top-left cell only.
    assert labels[0, 3, 0] == 3 and labels[1, 3, 0] == 2 and labels[2, 3, 0] == 1
    assert not labels[:, 3, 1:].any()


def test_marked_scenes_use_every_digit():
    seen = set()
    for index in range(40):
        scene = marked_scene(random.Random(index))
        marks = [drawn["mark"] for drawn in scene.objects]
        assert len(set(marks)) == len(marks) and all(1 <= mark <= 6 for mark in marks)
        seen.update(marks)
    assert seen == {1, 2, 3, 4, 5, 6}


def test_reader_columns_hand_the_llm_the_winning_word():
    model = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(demo.demo_model_path())
    tokenizer = sphinx_x.SphinxXProcessor.from_pretrained(demo.demo_model_path()).tokenizer
    columns = reader_columns(model, tokenizer)
    hidden = model.config.text_config.hidden_size
    words = label_words()
    first, last = LABEL_CHANNELS["digit"]
    embeddings = torch.stack([word_embedding(model, tokenizer, word) for word in words["digit"][1:]]).detach()
    for digit in range(1, 7):
        logits = torch.full((columns.shape[1],), -1.0)
        logits[first + digit] = 6.0  # a confident cell: one digit wins
        token = columns @ logits
        similarity = torch.nn.functional.cosine_similarity(token[None], embeddings - embeddings.mean(0), dim=-1)
        assert similarity.argmax().item() == digit - 1
    assert not columns[:, LABEL_CHANNELS["count"][1]:].any()  # channels past the labels are free: silent
    assert columns.shape == (hidden, model.config.convnext_config.hidden_sizes[-1])


def test_pretrain_replaces_the_reader_in_place(tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo.demo_model_path(), folder)
    before = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(folder).model.convnext.state_dict()
    report = pretrain(folder, images=30, steps=3, batch=8)
    assert set(report) >= {"held-out digit", "held-out color", "held-out global count"}
    model = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(folder)
    after = model.model.convnext.state_dict()
    assert model.model.visual_projector.linear.weight[:, :LABEL_CHANNELS["count"][1]].abs().sum() > 0
    assert after.keys() == before.keys()
    assert not torch.equal(after["model.embeddings.patch_embeddings.weight"],
                           before["model.embeddings.patch_embeddings.weight"])
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no temporary folder left behind


def test_the_demo_gates_read_the_reader_label_words():
    """The demo preset's `reader_words` gates hand the LLM the pretrained reader's digit and count words, and the
    character reader's code characters, each a single SmolLM2 token."""
    gates = preset_config("sphinx-x-demo").reader_words
    tokenizer = sphinx_x.SphinxXProcessor.from_pretrained(demo.demo_model_path()).tokenizer
    words = label_words()
    assert [gate["cells"] for gate in gates] == ["all", "global_first", "tiles"]
    assert [gate.get("reader", "convnext") for gate in gates] == ["convnext", "convnext", "char_reader"]
    characters = [tokenizer(char, add_special_tokens=False)["input_ids"] for char in DEMO_CODE_CHARACTERS]
    assert gates[2]["token_ids"] == [ids[0] for ids in characters] and all(len(ids) == 1 for ids in characters)
    for gate, kind in zip(gates, ("digit", "count")):
        assert gate["channels"] == list(LABEL_CHANNELS[kind])
        word_ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in words[kind][1:]]
        assert gate["token_ids"] == [ids[0] for ids in word_ids] and all(len(ids) == 1 for ids in word_ids)
    # The question writes the digit with the same token: "labeled 3?" -> "labeled", " ", "3", "?".
    assert gates[0]["token_ids"][2] in tokenizer("What color is the shape labeled 3?")["input_ids"]
