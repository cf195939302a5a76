"""The demo's projector start (`python -m sphinx_x.training.demo.init_projector`): image positions land near the
LLM's embeddings of the words for what lies under them."""

import shutil

import pytest
import torch

import sphinx_x
from sphinx_x import demo
from sphinx_x.training.demo.init_projector import BACKGROUND, fit, initialise, token_words


def test_token_words_name_what_lies_under_a_point():
    shape = {"box": [10, 10, 50, 50], "color": "red", "shape": "circle", "mark": 3, "text": ""}
    line = {"box": [60, 0, 100, 10], "text": "AB C", "color": None, "shape": None, "mark": None}
    objects = [shape, line]
    assert token_words(objects, 1.0, 30, 30) == ["red", "circle", "3"]  # the centre carries the mark
    assert token_words(objects, 1.0, 12, 12) == ["red", "circle"]
    assert token_words(objects, 2.0, 30, 30) == ["red", "circle"]  # boxes scale to the canvas
    assert token_words(objects, 1.0, 62, 5) == ["A"]
    assert token_words(objects, 1.0, 82, 5) == [BACKGROUND]  # the space between words
    assert token_words(objects, 1.0, 97, 5) == ["C"]
    assert token_words(objects, 1.0, 5, 80) == [BACKGROUND]


def test_fit_recovers_a_linear_map_through_the_layer_norm():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2000, 16, generator=generator)
    targets = 0.1 * torch.nn.functional.layer_norm(features @ torch.randn(16, 32, generator=generator) + 1.0, (32,))
    weight, bias, scale = fit(features, targets, ridge=1e-3)
    predicted = torch.nn.functional.layer_norm(features @ weight.T + bias, (32,)) * scale
    assert scale == pytest.approx(0.1, rel=1e-3)
    cosine = torch.nn.functional.cosine_similarity(predicted, targets, dim=-1)
    assert cosine.mean() > 0.998 and cosine.min() > 0.99  # LayerNorm is not linear: close, not exact


def test_initialise_points_image_positions_at_word_embeddings(tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo.demo_model_path(), folder)
    report = initialise(folder, images=25)
    assert report["cosine"] > 0.8  # held-out tokens against their words' embeddings (a random projector: ~0)
    assert report["heldout_word_accuracy"] > 0.5
    model = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(folder)
    projector = model.model.visual_projector
    convnext_width = projector.linear.in_features - model.config.dinov2_config.hidden_size
    assert not projector.linear.weight[:, :convnext_width].any()  # the reader starts silent and learns to speak
    assert torch.allclose(projector.norm.weight, torch.full_like(projector.norm.weight, report["scale"]))
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no temporary folder left behind
