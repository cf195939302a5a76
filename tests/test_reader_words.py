"""`SphinxXConfig.reader_words`: where a reader trained to read labels reads a word, the LLM receives that word's
input embedding in place of the fused token (the embedded demo model's Set-of-Mark digits and its count from the
ConvNeXt expert, code characters from its character reader); and `SphinxXConfig.place_words`, where a place
reader finds an object's centre, the words of its place."""

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

import sphinx_x
from sphinx_x.presets import preset_config

from conftest import make_tiny_model_and_processor


DIGITS = {"channels": [0, 4], "token_ids": [11, 12, 13], "cells": "all"}
COUNT = {"channels": [4, 7], "token_ids": [20, 21], "cells": "global_first"}
CHARACTERS = {"reader": "char_reader", "channels": [0, 3], "token_ids": [30, 31], "cells": "tiles"}


def char_reader_config(num_labels: int = 3) -> dict:
    """A tiny character reader with the tiny preset's ConvNeXt views (512 px, a 16x16 grid like the tokens)."""
    config = preset_config("tiny-random").convnext_config
    config.num_labels = num_labels
    return config.to_dict()


def reader_states(n_views: int, cells: int, channels: int) -> torch.Tensor:
    """`[n_views, 1 + cells, channels]` ConvNeXt outputs that read "none" with certainty everywhere."""
    states = torch.zeros(n_views, 1 + cells, channels)
    states[..., DIGITS["channels"][0]] = states[..., COUNT["channels"][0]] = 30.0
    return states


def test_a_read_word_replaces_the_token_and_nothing_else():
    model, _ = make_tiny_model_and_processor(reader_words=[DIGITS, COUNT])
    hidden, embeddings = model.config.text_config.hidden_size, model.get_input_embeddings().weight.detach()
    view_mask = torch.tensor([[True, True, False, True, True], [True, False, False, False, False]])
    n_views, cells = int(view_mask.sum()), 16
    tokens = torch.randn(n_views, 1 + cells, hidden)
    states = reader_states(n_views, cells, model.config.convnext_config.hidden_sizes[-1])
    states[1, 1 + 5, :4] = torch.tensor([0.0, 0.0, 30.0, 0.0])  # view 1, cell 5 reads the second digit word
    states[:, 1, 4:7] = torch.tensor([0.0, 0.0, 30.0])  # every view's first cell reads the second count word
    states[2, 1 + 7, :4] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # undecided: a quarter "none", a quarter each digit
    with torch.no_grad():
        gated = model.model.read_words(tokens, {"convnext": states}, view_mask)

    assert gated.shape == tokens.shape
    torch.testing.assert_close(gated[1, 1 + 5], embeddings[12])
    # The count gate reads only the global views: view 0 of the first image, view 4 (the second image's only one).
    torch.testing.assert_close(gated[0, 1], embeddings[21])
    torch.testing.assert_close(gated[4, 1], embeddings[21])
    torch.testing.assert_close(gated[2, 1 + 7], (tokens[2, 1 + 7] + embeddings[11:14].sum(0)) / 4)
    changed = torch.zeros(n_views, 1 + cells, dtype=torch.bool)
    changed[1, 6] = changed[0, 1] = changed[4, 1] = changed[2, 8] = True
    torch.testing.assert_close(gated[~changed], tokens[~changed])  # the global token and every other cell


def test_image_features_carry_the_read_words():
    torch.manual_seed(0)
    model, processor = make_tiny_model_and_processor(reader_words=[DIGITS])
    embeddings = model.get_input_embeddings().weight.detach()
    inputs = processor.image_processor(torch.rand(3, 300, 500), return_tensors="pt", do_rescale=False)
    reader = model.model.convnext.model
    with torch.no_grad():  # the reader's final norm reads digit word 3 (channel 3) at every cell
        reader.layernorm.weight.zero_()
        reader.layernorm.bias.zero_()
        reader.layernorm.bias[3] = 40.0
        features = model.get_image_features(inputs["pixel_values"], inputs["image_tile_mask"]).pooler_output[0]
    grid = model.config.token_grid_size**2
    per_view = model.config.tokens_per_view
    first_view_cells = features[2:2 + grid]  # after the start tag and the global token
    torch.testing.assert_close(first_view_cells, embeddings[13].expand(grid, -1))
    assert not torch.allclose(features[1], embeddings[13])  # the global token is never gated
    assert features.shape[0] == per_view * (1 + int(inputs["image_tile_mask"].sum())) + int(
        (~inputs["image_tile_mask"].bool()).sum())


@pytest.mark.parametrize(("gate", "message"), [
    ({**DIGITS, "token_ids": [11, 12]}, "'none' plus one channel per token id"),
    ({**DIGITS, "channels": [30, 40]}, "within the convnext's 32 output channels"),
    ({**DIGITS, "cells": "some"}, "global_first"),
    ({**DIGITS, "reader": "eyes"}, "reads 'eyes', which this config does not have"),
    (CHARACTERS, "reads 'char_reader', which this config does not have"),
])
def test_malformed_gates_are_refused(gate, message):
    with pytest.raises(ValueError, match=message):
        preset_config("tiny-random", reader_words=[gate])


def test_gates_need_a_convnext():
    config = preset_config("tiny-random").to_dict()
    config.update(convnext_config=None, reader_words=[DIGITS])
    with pytest.raises(ValueError, match="reads 'convnext', which this config does not have"):
        sphinx_x.SphinxXConfig(**config)


def test_a_character_reader_grid_must_divide_the_token_grid():
    with pytest.raises(ValueError, match="3x3 grid must divide the 16x16 token grid"):
        preset_config("tiny-random", char_reader_config={**char_reader_config(), "image_size": 96})


def test_the_character_gate_reads_the_tile_views_only():
    model, _ = make_tiny_model_and_processor(char_reader_config=char_reader_config(), reader_words=[CHARACTERS])
    hidden, embeddings = model.config.text_config.hidden_size, model.get_input_embeddings().weight.detach()
    view_mask = torch.tensor([[True, True, False, False, True], [True, True, True, True, True]])
    n_views, cells = int(view_mask.sum()), 16
    tokens = torch.randn(n_views, 1 + cells, hidden)
    logits = torch.zeros(n_views, 1 + cells, 3)
    logits[..., 0] = 30.0  # "none" everywhere ...
    logits[:, 1 + 4] = torch.tensor([0.0, 30.0, 0.0])  # ... but cell 4 of every view reads the first character
    with torch.no_grad():
        gated = model.model.read_words(tokens, {"char_reader": logits}, view_mask)
    tiles = torch.tensor([False, True, True, False, True, True, True, True])  # views 0 and 3 are global views
    torch.testing.assert_close(gated[tiles, 1 + 4], embeddings[30].expand(int(tiles.sum()), -1))
    torch.testing.assert_close(gated[~tiles], tokens[~tiles])
    untouched = torch.ones(1 + cells, dtype=torch.bool)
    untouched[1 + 4] = False
    torch.testing.assert_close(gated[:, untouched], tokens[:, untouched])


def test_image_features_carry_the_characters_the_char_reader_names():
    torch.manual_seed(0)
    model, processor = make_tiny_model_and_processor(char_reader_config=char_reader_config(),
                                                     reader_words=[CHARACTERS])
    embeddings = model.get_input_embeddings().weight.detach()
    inputs = processor.image_processor(torch.rand(3, 300, 500), return_tensors="pt", do_rescale=False)
    with torch.no_grad():  # the head names the second character at every cell, whatever it sees
        model.model.char_reader.head.weight.zero_()
        model.model.char_reader.head.bias.copy_(torch.tensor([0.0, 0.0, 40.0]))
        features = model.get_image_features(inputs["pixel_values"], inputs["image_tile_mask"]).pooler_output[0]
    grid, per_view = model.config.token_grid_size**2, model.config.tokens_per_view
    global_cells, first_tile_cells = features[2:2 + grid], features[per_view + 2:per_view + 2 + grid]
    torch.testing.assert_close(first_tile_cells, embeddings[31].expand(grid, -1))
    assert not torch.allclose(global_cells, embeddings[31].expand(grid, -1))


def test_a_character_reader_saves_and_loads(tmp_path):
    model, _ = make_tiny_model_and_processor(char_reader_config=char_reader_config(), reader_words=[CHARACTERS])
    model.save_pretrained(tmp_path)
    loaded = sphinx_x.SphinxXForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.char_reader_config.num_labels == 3
    for name, tensor in model.model.char_reader.state_dict().items():
        torch.testing.assert_close(loaded.model.char_reader.state_dict()[name], tensor)


# The tiny preset's image has 2x2 tiles of 16x16 cells: 32 columns and 32 rows, each named by a run of two words.
PLACES = {"hidden_size": 4, "column_token_ids": [[100 + column, 150 + column] for column in range(32)],
          "row_token_ids": [[300 + row, 350 + row] for row in range(32)]}


def test_a_place_writes_its_column_and_row_words_in_the_tile_views():
    """Where the place reader finds an object's centre in a tile, that cell and the next three (reading order) become
    the words of the cell's image-wide column, then of its row; global views and other cells stay as they are."""
    model, _ = make_tiny_model_and_processor(place_words=PLACES)
    hidden, embeddings = model.config.text_config.hidden_size, model.get_input_embeddings().weight.detach()
    view_mask = torch.tensor([[True, True, False, True, True], [True, False, False, False, False]])
    n_views, grid = int(view_mask.sum()), model.config.token_grid_size
    tokens = torch.randn(n_views, 1 + grid * grid, hidden)
    states = torch.randn(n_views, 1 + grid * grid, model.config.convnext_config.hidden_sizes[-1])
    reader = model.model.place_reader
    with torch.no_grad():  # the reader reads a marker channel: certain of a centre at (row 2, column 5), none elsewhere
        for parameter in reader.parameters():
            parameter.zero_()
        reader.conv.weight[0, 0, 1, 1] = 1.0  # the 3x3 convolution's middle tap of state channel 0
        reader.head.weight[0, 0] = 80.0
        reader.head.bias.fill_(-40.0)
        states[:, 1:, 0] = 0.0
        states[:, 1 + 2 * grid + 5, 0] = 1.0
        named = model.model.write_places(tokens, states, view_mask)

    # Kept views: image 0's global view, tiles 0, 2 and 3 (of the 2x2 grid), image 1's global view.
    image_cells = {1: (2, 5), 2: (16 + 2, 5), 3: (16 + 2, 16 + 5)}  # view -> the marked cell's image row, column
    changed = torch.zeros(n_views, 1 + grid * grid, dtype=torch.bool)
    for view, (row, column) in image_cells.items():
        run = PLACES["column_token_ids"][column] + PLACES["row_token_ids"][row]
        for step, token_id in enumerate(run):
            cell = 1 + 2 * grid + 5 + step
            torch.testing.assert_close(named[view, cell], embeddings[token_id], atol=1e-5, rtol=1e-5)
            changed[view, cell] = True
    torch.testing.assert_close(named[~changed], tokens[~changed])  # global views, global tokens, other cells


def test_image_features_carry_the_place_words():
    torch.manual_seed(0)
    model, processor = make_tiny_model_and_processor(place_words=PLACES)
    inputs = processor.image_processor(torch.rand(3, 300, 500), return_tensors="pt", do_rescale=False)
    head = model.model.place_reader.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-40.0)  # no centre anywhere: the tokens as they are
        plain = model.get_image_features(inputs["pixel_values"], inputs["image_tile_mask"]).pooler_output[0]
        head.bias.fill_(40.0)  # a centre everywhere: each tile cell holds the word its left neighbours' runs end on
        named = model.get_image_features(inputs["pixel_values"], inputs["image_tile_mask"]).pooler_output[0]
    grid, per_view = model.config.token_grid_size, model.config.tokens_per_view
    global_view = slice(0, per_view)
    torch.testing.assert_close(named[global_view], plain[global_view])
    first_tile_cells = named[per_view + 2:per_view + 2 + grid * grid]  # after the start tag and the global token
    assert not torch.allclose(first_tile_cells, plain[per_view + 2:per_view + 2 + grid * grid])


def test_a_read_word_wins_the_cell_of_a_place():
    """A Set-of-Mark label is drawn on its shape's centre, the cell the place reader marks: the label's word keeps that
    cell (places are written first, the gates after them), and the place's words fill the cells after it."""
    model, processor = make_tiny_model_and_processor(reader_words=[DIGITS], place_words=PLACES)
    inputs = processor.image_processor(torch.rand(3, 512, 512), return_tensors="pt", do_rescale=False)
    embeddings, grid = model.get_input_embeddings().weight.detach(), model.config.token_grid_size
    convnext = model.model.convnext

    def label_on_cell_five(views):  # cell 5 of every view: the second digit, and a centre (channel 8)
        states = torch.zeros(views.shape[0], 1 + grid * grid, model.config.convnext_config.hidden_sizes[-1])
        states[..., 0] = 30.0
        states[:, 1 + 5, :4] = torch.tensor([0.0, 0.0, 30.0, 0.0])
        states[:, 1 + 5, 8] = 1.0
        return BaseModelOutput(last_hidden_state=states)

    convnext.forward = label_on_cell_five
    reader = model.model.place_reader
    with torch.no_grad():  # the place reader reads channel 8: certain of a centre at cell 5, none elsewhere
        for parameter in reader.parameters():
            parameter.zero_()
        reader.conv.weight[0, 8, 1, 1] = 1.0
        reader.head.weight[0, 0] = 80.0
        reader.head.bias.fill_(-40.0)
        tokens = model.get_image_features(inputs["pixel_values"], inputs["image_tile_mask"]).last_hidden_state
    assert tokens.shape[0] == 5  # the global view and four tiles
    torch.testing.assert_close(tokens[0, 1 + 5], embeddings[12])
    for tile in range(4):
        column, row = tile % 2 * grid + 5, tile // 2 * grid
        run = PLACES["column_token_ids"][column] + PLACES["row_token_ids"][row]
        torch.testing.assert_close(tokens[1 + tile, 1 + 5], embeddings[12])  # the label, not the run's first word
        for step in (1, 2, 3):
            torch.testing.assert_close(tokens[1 + tile, 1 + 5 + step], embeddings[run[step]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("place_words", [
    {**PLACES, "row_token_ids": PLACES["row_token_ids"][:16]},
    {**PLACES, "row_token_ids": [[300 + row] for row in range(32)]},
    {**PLACES, "hidden_size": 0},
    {"column_token_ids": PLACES["column_token_ids"]},
])
def test_malformed_place_words_are_refused(place_words):
    with pytest.raises(ValueError, match="place_words .* is malformed: it needs a ConvNeXt expert"):
        preset_config("tiny-random", place_words=place_words)
