"""Grounded answers as pixels: the model's boxes and points on the original image, SAM masks, a drawing and JSON."""

import json
from pathlib import Path

import PIL.Image

from .draw import draw_grounding
from .segment import mask_to_rle


def ground_answer(processor, answer: str, image: PIL.Image.Image, segmenter=None) -> tuple[dict, PIL.Image.Image]:
    """`(record, annotated image)` for a model `answer` about `image`.

    `record`: `{"answer", "text" (without markup), "width", "height", "objects": [{"phrase", "box" [x1, y1, x2, y2]
    pixels, "score" (SAM's predicted IoU, None without SAM), "mask" (COCO RLE, None without SAM)}], "points":
    [{"phrase", "point" [x, y]}]}`; one object per box, with `segmenter` (`BoxSegmenter`) one mask per box.
    """
    grounded = processor.post_process_grounding(answer, (image.height, image.width))
    boxes = [(entity["phrase"], box) for entity in grounded["entities"] for box in entity["boxes"]]
    masks = scores = None
    if segmenter is not None and boxes:
        masks, scores = segmenter(image, [box for _, box in boxes])
    objects = [
        {
            "phrase": phrase,
            "box": [round(value, 2) for value in box],
            "score": None if scores is None else round(float(scores[index]), 4),
            "mask": None if masks is None else mask_to_rle(masks[index]),
        }
        for index, (phrase, box) in enumerate(boxes)
    ]
    points = [
        {"phrase": entity["phrase"], "point": [round(value, 2) for value in point]}
        for entity in grounded["entities"]
        for point in entity["points"]
    ]
    record = {"answer": answer, "text": grounded["text"], "width": image.width, "height": image.height,
              "objects": objects, "points": points}
    return record, draw_grounding(image, grounded["entities"], masks)


def run_ground(model, processor, image: PIL.Image.Image, args) -> None:
    """`sphinx-x ground`: stream the answer about `image`, print the boxes, write the annotated image and the JSON."""
    from ..cli import answer

    segmenter = None
    if args.sam:
        from .segment import BoxSegmenter

        segmenter = BoxSegmenter(args.sam, device=args.device)
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": args.question}]}]
    reply = answer(model, processor, messages, args.max_new_tokens)
    record, annotated = ground_answer(processor, reply, image, segmenter)
    record = {"question": args.question, "image": str(args.image), **record}
    for item in record["objects"]:
        score = "" if item["score"] is None else f"  mask score {item['score']:.3f}"
        print(f"{item['phrase'] or '(box)'}: {item['box']}{score}")
    for item in record["points"]:
        print(f"{item['phrase'] or '(point)'}: {item['point']}")
    if not record["objects"] and not record["points"]:
        print("(no boxes or points in the answer)")
    if args.out:
        annotated.save(args.out)
        print(f"Wrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"Wrote {args.json}")
