"""Grounding text (spec 9): the processor's parser on every format, malformed and partial boxes, round trips
`format_box` -> `post_process_grounding` on both canvases and several aspect ratios, and the boxes agreeing with
where the image processor really puts the image."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from sphinx_x import SphinxXImageProcessor, SphinxXProcessor
from sphinx_x.conversion.accessory import build_tokenizer
from sphinx_x.processors.grounding import clean_text, ground_text, parse_boxes
from sphinx_x.processors.image_processing_sphinx_x import padded_frame
from sphinx_x.training.synthetic import format_box as synthetic_format_box
from sphinx_x.training.synthetic.grounding import grounding_sample

from conftest import FIXTURE
from remote_code import run_without_sphinx_x


SIZES = [(400, 100), (100, 400), (64, 400), (333, 333), (1000, 561), (77, 250)]  # (width, height)
CANVASES = [  # (skip_padded_tiles, grid): SPHINX-X top-left with skipping, released checkpoints centred
    (True, [2, 2]),
    (False, [2, 2]),
    (True, [1, 3]),
    (True, [3, 1]),
    (False, [1, 1]),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(FIXTURE / "checkpoint")


def make_processor(tokenizer, skip: bool, grid, tile_size: int = 64) -> SphinxXProcessor:
    image_processor = SphinxXImageProcessor(tile_size=tile_size, image_grid=grid, skip_padded_tiles=skip,
                                            tokens_per_view=5)
    return SphinxXProcessor(image_processor=image_processor, tokenizer=tokenizer)


def test_every_format_of_the_reference():
    # 9.1: boxes, several per bracket with ';', phrases with optional whitespace before the bracket, points.
    text = ("<p>a cat</p> [0.10,0.20,0.30,0.40;0.50,0.60,0.70,0.80] sits by <p>a dog</p>[0.11,0.22,0.33,0.44], "
            "<p>nose</p> [0.50,0.60] and [0.70,0.80,0.90,1.00].")
    result = ground_text(text, 100, 100)
    assert result["text"] == "a cat sits by a dog, nose and."
    assert result["entities"] == [
        {"phrase": "a cat", "boxes": [[10.0, 20.0, 30.0, 40.0], [50.0, 60.0, 70.0, 80.0]], "points": []},
        {"phrase": "a dog", "boxes": [[11.0, 22.0, 33.0, 44.0]], "points": []},
        {"phrase": "nose", "boxes": [], "points": [[50.0, 60.0]]},
        {"phrase": "", "boxes": [[70.0, 80.0, 90.0, 100.0]], "points": []},
    ]
    # The reference demo's processing order is kept by parse_boxes: phrases last to first, then bare brackets.
    assert [group.phrase for group in parse_boxes(text)] == ["nose", "a dog", "a cat", ""]
    # A REC answer is one bare box and no text.
    assert ground_text("[0.26,0.23,0.52,0.82]", 100, 50) == {
        "text": "", "entities": [{"phrase": "", "boxes": [[26.0, 23.0, 52.0, 50.0]], "points": []}]}


@pytest.mark.parametrize("text", [
    "", "no boxes at all", "[", "]", "[]", "[;]", "[0.1,0.2,0.3", "<p>dog</p> [0.10,0.20,0.3", "<p>dog",
    "<p>dog</p>", "</p>[0.1,0.2,0.3,0.4]<p>", "[0.1,0.2,0.3]", "[0.1,0.2,0.3,0.4,0.5]", "[1,2,3,4]", "[-0.1,0.2]",
    "[0.1.2.3,0.4]", "[" + "0.5," * 10_000 + "]", "[99999999999999999999.0,0.0,1e5,0.2]", "<p><p>x</p></p>[0.1,0.1]",
    "[0.90,0.90,0.10,0.10]", "[0.50,0.50,0.50,0.50]", "[1.50,2.50,3.50,4.50]", "<p>a\nb</p>\n[0.1,0.2,0.3,0.4]",
    "\x00[0.1,0.2,0.3,0.4]\ud800", "[0.1,0.2,0.3,0.4;;0.5,0.6;0.7]",
])
@pytest.mark.parametrize("skip", [True, False])
def test_malformed_and_partial_answers_never_raise(tokenizer, text, skip):
    processor = make_processor(tokenizer, skip, [2, 2])
    for height, width in [(50, 200), (200, 50), (1, 1)]:
        result = processor.post_process_grounding(text, (height, width))
        assert isinstance(result["text"], str)
        for entity in result["entities"]:
            assert entity["boxes"] or entity["points"]
            for x1, y1, x2, y2 in entity["boxes"]:
                assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            for x, y in entity["points"]:
                assert 0 <= x <= width and 0 <= y <= height


def test_malformed_parts_are_dropped_and_the_rest_kept():
    result = ground_text("<p>dog</p> [0.10,0.20,0.30;0.10,0.20,0.30,0.40;1,2,3,4] and <p>cat</p> [0.1", 100, 100)
    assert result["entities"] == [{"phrase": "dog", "boxes": [[10.0, 20.0, 30.0, 40.0]], "points": []}]
    assert result["text"] == "dog and cat [0.1"  # a box cut off mid-stream stays text until it closes
    # Corners are ordered and clipped to the image; brackets without decimals are text.
    assert ground_text("[0.90,0.80,0.10,0.20] [1.50,0.50,0.20,0.20]", 100, 100)["entities"] == [
        {"phrase": "", "boxes": [[10.0, 20.0, 90.0, 80.0]], "points": []},
        {"phrase": "", "boxes": [[20.0, 20.0, 100.0, 50.0]], "points": []},
    ]
    assert clean_text("I count [3] dogs <p>here</p> [0.1,0.1,0.2,0.2] .") == "I count [3] dogs here."


@pytest.mark.parametrize("skip,grid", CANVASES)
def test_format_box_round_trips_through_post_process_grounding(tokenizer, skip, grid):
    processor = make_processor(tokenizer, skip, grid)
    rng = np.random.default_rng(0)
    for width, height in SIZES:
        for _ in range(20):
            x1, x2 = sorted(rng.uniform(0, width, 2))
            y1, y2 = sorted(rng.uniform(0, height, 2))
            box, point = [x1, y1, x2, y2], [x2, y1]
            text = (f"<p>the thing</p> {processor.format_box([box, point], (height, width))} and "
                    f"{processor.format_box(box, (height, width))}")
            result = processor.post_process_grounding([text], [(height, width)])[0]
            (named, bare) = result["entities"]
            assert named["phrase"] == "the thing" and bare["phrase"] == ""
            # Two decimals of the padded frame: at most half a hundredth of its side off, per coordinate.
            frame_width, frame_height = frame_of(processor, width, height)
            tolerance = np.array([frame_width, frame_height] * 2) * 0.005 + 1e-6
            for back in (named["boxes"][0], bare["boxes"][0]):
                assert np.all(np.abs(np.array(back) - box) <= tolerance)
            assert np.all(np.abs(np.array(named["points"][0]) - point) <= tolerance[:2])
            # And formatting the parsed pixels again gives the same text, digit for digit.
            assert processor.format_box(bare["boxes"][0], (height, width)) == processor.format_box(box, (height, width))


def frame_of(processor, width, height):
    return padded_frame(width, height, *processor.image_processor.canvas_size)


@pytest.mark.parametrize("skip,grid", CANVASES)
@pytest.mark.parametrize("width,height", [(400, 100), (90, 300), (250, 250)])
def test_boxes_land_where_the_image_processor_puts_the_pixels(tokenizer, skip, grid, width, height):
    """A black rectangle drawn on a white image, laid on the canvas by the image processor: the canvas pixels at the
    normalised box are black and those just outside are not (white image or grey padding), for both placements and
    any grid."""
    processor = make_processor(tokenizer, skip, grid, tile_size=128)
    box = [round(width * 0.3), round(height * 0.4), round(width * 0.7), round(height * 0.8)]
    image = PIL.Image.new("RGB", (width, height), "white")
    image.paste((0, 0, 0), tuple(box))
    canvas = np.asarray(processor.image_processor.to_canvas(image).convert("L"), dtype=np.float32)
    canvas_height, canvas_width = canvas.shape
    (group,) = parse_boxes(processor.format_box(box, (height, width)))
    x1, y1, x2, y2 = np.array(group.boxes[0]) * np.array([canvas_width, canvas_height] * 2)
    inside = canvas[int(y1) + 2 : int(y2) - 2, int(x1) + 2 : int(x2) - 2]
    assert inside.size and inside.max() < 60
    # Two decimals of the frame, plus the bicubic blur.
    margin = 0.005 * max(canvas.shape) + 4
    ring = [canvas[int(y1 - margin), int((x1 + x2) / 2)], canvas[int(y2 + margin), int((x1 + x2) / 2)],
            canvas[int((y1 + y2) / 2), int(x1 - margin)], canvas[int((y1 + y2) / 2), int(x2 + margin)]]
    assert min(y1, x1) > margin and min(ring) > 100


def test_synthetic_grounding_answers_are_the_processor_format(tokenizer):
    """The generator writes what `processor.format_box` writes for the matching canvas."""
    import random

    assert synthetic_format_box.__module__ == "sphinx_x.processors.grounding"
    for placement, skip in [("top_left", True), ("center", False)]:
        processor = make_processor(tokenizer, skip, [2, 2])
        sample = grounding_sample(random.Random(3), "grounding_rec", max_side=200, placement=placement)
        width, height = sample.image.size
        assert sample.answer == processor.format_box(sample.target_box, (height, width))


def test_post_process_grounding_checks_its_arguments(tokenizer):
    processor = make_processor(tokenizer, True, [2, 2])
    with pytest.raises(ValueError, match="one \\(height, width\\) per answer"):
        processor.post_process_grounding(["[0.1,0.1,0.2,0.2]", "x"], [(10, 10)])
    for bad in ([1, 2, 3], [], [[1, 2, 3, 4], [1]]):
        with pytest.raises(ValueError, match="4 numbers"):
            processor.format_box(bad, (10, 10))
    # Arrays and tensors work like lists; boxes and points share a bracket.
    assert processor.format_box(np.array([[10, 20, 30, 40], [50, 60, 70, 80]]), (100, 100)) == (
        "[0.10,0.20,0.30,0.40;0.50,0.60,0.70,0.80]")
    assert processor.format_box(torch.tensor([10.0, 20.0]), (100, 100), phrase="nose") == "<p>nose</p> [0.10,0.20]"


def test_a_saved_processor_grounds_as_remote_code(converted_dir, tmp_path):
    """The converted folder carries grounding.py next to the processor, and it works without sphinx_x installed."""
    assert (Path(converted_dir) / "grounding.py").is_file()
    result = run_without_sphinx_x(
        """
        import sys
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
        print(processor.post_process_grounding("<p>cat</p> [0.10,0.20,0.30,0.40]", (100, 200)))
        print(processor.format_box([20, 0, 60, 20], (100, 200)))
        """,
        converted_dir, cwd=tmp_path,
    )
    # The fixture is a released checkpoint: centred on the 200x200 square, 50 pixels of padding above.
    assert result.stdout.splitlines() == [
        "{'text': 'cat', 'entities': [{'phrase': 'cat', 'boxes': [[20.0, 0.0, 60.0, 30.0]], 'points': []}]}",
        "[0.10,0.25,0.30,0.35]",
    ]
