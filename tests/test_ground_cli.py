"""`sphinx-x ground` end to end on the default (embedded demo) model, with a tiny SAM: the streamed answer, the
JSON of phrases, pixel boxes, scores and mask RLEs, and the annotated image. Structure, not specific answers: the
demo model changes."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from transformers import AutoProcessor

from sphinx_x import demo_model_path
from sphinx_x.apps.segment import rle_to_mask
from sphinx_x.cli import main

from sam_factory import save_tiny_sam


EXAMPLE = Path(__file__).parents[1] / "examples" / "grounding.png"
QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: the red circle."


def test_ground_writes_the_answer_boxes_masks_and_drawing(tmp_path, capsys):
    sam = save_tiny_sam(tmp_path / "sam")
    out, record_path = tmp_path / "annotated.png", tmp_path / "out.json"
    args = ["ground", "--image", str(EXAMPLE), QUESTION, "--sam", sam, "--out", str(out), "--json", str(record_path),
            "--max-new-tokens", "40"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    record = json.loads(record_path.read_text())
    image = PIL.Image.open(EXAMPLE).convert("RGB")
    assert printed[0] == record["answer"] and record["question"] == QUESTION
    assert (record["width"], record["height"]) == image.size
    # The boxes are the processor's reading of the answer, one object per box, each with its SAM mask and score.
    grounded = AutoProcessor.from_pretrained(demo_model_path()).post_process_grounding(
        record["answer"], (image.height, image.width))
    boxes = [box for entity in grounded["entities"] for box in entity["boxes"]]
    assert boxes, f"a grounding question got no box: {record['answer']!r}"
    assert record["text"] == grounded["text"]
    assert [item["box"] for item in record["objects"]] == [[round(v, 2) for v in box] for box in boxes]
    for item, line in zip(record["objects"], printed[1:]):
        assert line.startswith(f"(box): {item['box']}  mask score ")
        assert isinstance(item["score"], float)
        mask = rle_to_mask(item["mask"])
        assert mask.shape == (image.height, image.width)
    # The drawing: the original size, changed along the first box's outline and nowhere far from the boxes.
    annotated = np.asarray(PIL.Image.open(out).convert("RGB")).astype(int)
    assert annotated.shape == (image.height, image.width, 3)
    changed = np.abs(annotated - np.asarray(image)).sum(-1) > 0
    x1, y1, x2, y2 = (round(v) for v in boxes[0])
    assert changed[y1 : y2 + 1, x1 : x2 + 1].any()
    masks = np.any([rle_to_mask(item["mask"]) for item in record["objects"]], axis=0)
    near_boxes = np.zeros_like(changed)
    for bx1, by1, bx2, by2 in boxes:
        near_boxes[max(0, int(by1) - 30) : int(by2) + 4, max(0, int(bx1) - 3) : int(bx2) + 4] = True
    assert not (changed & ~near_boxes & ~masks).any()


def test_ground_reports_a_missing_image_in_one_line(tmp_path, capsys):
    assert main(["ground", "--image", str(tmp_path / "nope.png"), "Where?"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sphinx-x: error: image 0: no file at") and error.count("\n") == 1


@pytest.mark.parametrize("argv", [["ground", "Where?"], ["ground", "--image", str(EXAMPLE)]])
def test_ground_needs_an_image_and_a_question(argv):
    with pytest.raises(SystemExit):
        main(argv)
