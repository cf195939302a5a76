"""SAM masks from box prompts (a tiny random `SamModel` built from a config), mask RLEs, and the drawing of boxes,
labels, points and masks."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.sam.modeling_sam import SamImageSegmentationOutput

from sphinx_x.apps.draw import COLORS, draw_grounding
from sphinx_x.apps.segment import BoxSegmenter, mask_to_rle, rle_to_mask

from sam_factory import SAM_INPUT, save_tiny_sam


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> str:
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny-sam")


@pytest.mark.parametrize("size", [(120, 80), (50, 150), (64, 64)])
def test_one_mask_per_box_on_the_original_image(tiny_sam, size):
    segmenter = BoxSegmenter(tiny_sam)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    boxes = [[5.0, 5.0, 30.0, 40.0], [10.0, 20.0, 45.0, 50.0], [0.0, 0.0, size[0], size[1]]]
    masks, scores = segmenter(image, boxes)
    assert masks.shape == (3, size[1], size[0]) and masks.dtype == bool
    assert scores.shape == (3,) and np.isfinite(scores).all()
    masks, scores = segmenter(image, [])
    assert masks.shape == (0, size[1], size[0]) and scores.shape == (0,)


def test_masks_are_placed_where_the_boxes_are(tiny_sam, monkeypatch):
    """SAM answers each box prompt with a low-resolution mask filling that prompt (in SAM's resized, padded frame);
    mapped back, every mask must cover its box of the original image and little else."""
    segmenter = BoxSegmenter(tiny_sam)
    real_forward = segmenter.model.forward

    def box_filling_forward(*args, input_boxes, **kwargs):
        outputs = real_forward(*args, input_boxes=input_boxes, **kwargs)
        low_res = outputs.pred_masks.shape[-1]
        scale = low_res / SAM_INPUT
        grid = (torch.arange(low_res) + 0.5) / scale  # low-res pixel centres in SAM input pixels
        inside = [
            ((grid[None, :] >= x1) & (grid[None, :] <= x2) & (grid[:, None] >= y1) & (grid[:, None] <= y2))
            for x1, y1, x2, y2 in input_boxes[0].tolist()
        ]
        logits = torch.stack(inside).float()[None, :, None] * 40 - 20
        return SamImageSegmentationOutput(iou_scores=outputs.iou_scores, pred_masks=logits)

    monkeypatch.setattr(segmenter.model, "forward", box_filling_forward)
    for width, height in [(240, 120), (90, 300)]:
        image = PIL.Image.new("RGB", (width, height), "white")
        boxes = [[0.1 * width, 0.2 * height, 0.5 * width, 0.9 * height],
                 [0.6 * width, 0.05 * height, width, 0.4 * height]]
        masks, _ = segmenter(image, boxes)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes):
            expected = np.zeros((height, width), bool)
            expected[round(y1) : round(y2), round(x1) : round(x2)] = True
            # One low-resolution pixel is max(width, height) / 32 original pixels: the edges may move by that much.
            edge = max(width, height) / 32
            perimeter = 2 * (x2 - x1 + y2 - y1)
            assert (expected & ~mask).sum() < edge * perimeter and (mask & ~expected).sum() < edge * perimeter
            ys, xs = np.nonzero(mask)
            assert abs(xs.min() - x1) <= edge and abs(xs.max() + 1 - x2) <= edge
            assert abs(ys.min() - y1) <= edge and abs(ys.max() + 1 - y2) <= edge


def test_mask_rle_round_trips_in_coco_order():
    rng = np.random.default_rng(0)
    for mask in [rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((2, 2), bool), rng.random((1, 9)) > 0.3]:
        rle = mask_to_rle(mask)
        assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
    # COCO's layout: column-major, starting with the count of zeros.
    assert mask_to_rle(np.array([[1, 0], [1, 1]], bool)) == {"size": [2, 2], "counts": [0, 2, 1, 1]}


def test_drawing_one_colour_per_phrase_with_labels_points_and_masks():
    image = PIL.Image.new("RGB", (200, 100), "white")
    entities = [
        {"phrase": "cat", "boxes": [[10.0, 40.0, 60.0, 90.0], [120.0, 40.0, 150.0, 90.0]], "points": []},
        {"phrase": "dog", "boxes": [[70.0, 40.0, 110.0, 90.0]], "points": []},
        {"phrase": "nose", "boxes": [], "points": [[180.0, 20.0]]},
    ]
    masks = np.zeros((3, 100, 200), bool)
    masks[0, 60:70, 20:30] = masks[2, 60:70, 80:90] = True
    drawn = np.asarray(draw_grounding(image, entities, masks))
    assert drawn.shape == (100, 200, 3)
    red, blue, green = (np.array(PIL.Image.new("RGB", (1, 1), name).getpixel((0, 0))) for name in COLORS[:3])
    # Box outlines in their phrase's colour: both "cat" boxes red, "dog" blue; the point of "nose" green.
    np.testing.assert_array_equal(drawn[90, 35], red)
    np.testing.assert_array_equal(drawn[90, 135], red)
    np.testing.assert_array_equal(drawn[90, 90], blue)
    np.testing.assert_array_equal(drawn[20, 180], green)
    # Masks blended at alpha 0.5 over white in their box's colour; elsewhere the image is untouched.
    np.testing.assert_allclose(drawn[65, 25], np.round(0.5 * 255 + 0.5 * red), atol=1)
    np.testing.assert_allclose(drawn[65, 85], np.round(0.5 * 255 + 0.5 * blue), atol=1)
    np.testing.assert_array_equal(drawn[65, 45], [255, 255, 255])
    # The labels: filled in the phrase colour above the boxes, with white text on them.
    label = drawn[29:39, 11:27]
    assert (label == red).all(axis=-1).mean() > 0.4 and (label[..., 1] > 150).any()
    # Nothing to draw, nothing drawn; the input is never modified.
    np.testing.assert_array_equal(np.asarray(draw_grounding(image, [])), np.asarray(image))
    assert np.asarray(image).min() == 255


def test_coco_keypoints_get_the_skeleton():
    image = PIL.Image.new("RGB", (100, 100), "white")
    entities = [{"phrase": "left shoulder", "boxes": [], "points": [[20.0, 50.0]]},
                {"phrase": "right shoulder", "boxes": [], "points": [[80.0, 50.0]]}]
    drawn = np.asarray(draw_grounding(image, entities))
    np.testing.assert_array_equal(drawn[50, 50], [0, 128, 0])  # PIL's "green", the reference's skeleton colour
