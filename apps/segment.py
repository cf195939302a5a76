"""SAM masks for the boxes of a grounded answer (spec 9.4), with transformers' `SamModel` / `SamProcessor`."""

import numpy as np
import PIL.Image
import torch


class BoxSegmenter:
    """One SAM mask per box prompt, on the original image (`multimask_output=False`, as the reference demo).

    Args:
        model (`str`): a SAM checkpoint id or folder, e.g. `facebook/sam-vit-base` or `facebook/sam-vit-huge`.
        device (`str`), dtype (`torch.dtype`): where and in which precision SAM runs.
    """

    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import SamModel, SamProcessor

        self.processor = SamProcessor.from_pretrained(model)
        self.model = SamModel.from_pretrained(model, dtype=dtype).to(device).eval()

    @torch.no_grad()
    def __call__(self, image: PIL.Image.Image, boxes: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
        """`boxes` `[N, 4]` pixel `[x1, y1, x2, y2]` of `image` -> masks `[N, H, W]` bool and SAM's predicted IoU
        scores `[N]` float (empty arrays for no boxes)."""
        image = image.convert("RGB")
        if not boxes:
            return np.zeros((0, image.height, image.width), bool), np.zeros(0, np.float32)
        inputs = self.processor(images=image, input_boxes=[[list(map(float, box)) for box in boxes]],
                                return_tensors="pt")
        original_sizes, reshaped_sizes = inputs.pop("original_sizes"), inputs.pop("reshaped_input_sizes")
        inputs = inputs.to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        inputs["input_boxes"] = inputs["input_boxes"].to(self.model.dtype)
        outputs = self.model(**inputs, multimask_output=False)
        masks = self.processor.post_process_masks(outputs.pred_masks.float().cpu(), original_sizes, reshaped_sizes)
        return masks[0][:, 0].numpy(), outputs.iou_scores[0, :, 0].float().cpu().numpy()


def mask_to_rle(mask: np.ndarray) -> dict:
    """`[H, W]` bool mask -> COCO's uncompressed RLE `{"size": [H, W], "counts": [...]}` (column-major runs starting
    with a run of zeros; `pycocotools.mask.frPyObjects` reads it)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of `mask_to_rle`."""
    height, width = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape((height, width), order="F")
