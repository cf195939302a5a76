"""Draw a grounded answer on its image (spec 9.3 / 9.4): boxes, labels, points, COCO skeletons and masks."""

import numpy as np
import PIL.Image
import PIL.ImageColor
import PIL.ImageDraw
import PIL.ImageFont


# The reference demo's colours, in its order; one per phrase here.
COLORS = ("red", "blue", "green", "purple", "orange")
MASK_ALPHA = 0.5
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# 1-based COCO skeleton edges, as the reference demo draws them.
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10), (9, 11),
    (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)


def phrase_colors(entities: list[dict]) -> dict[str, str]:
    """One colour per distinct phrase, in the order the phrases first appear."""
    colors = {}
    for entity in entities:
        colors.setdefault(entity["phrase"], COLORS[len(colors) % len(COLORS)])
    return colors


def draw_grounding(image: PIL.Image.Image, entities: list[dict], masks=None) -> PIL.Image.Image:
    """A copy of `image` with each entity's boxes (outlined, labelled with the phrase) and points in its phrase's
    colour, and `masks` (`[N, H, W]` bool, one per box in entity order) blended at alpha 0.5 under the boxes.

    `entities` as `SphinxXProcessor.post_process_grounding` returns them (pixel coordinates).
    """
    image = image.convert("RGB")
    colors = phrase_colors(entities)
    box_colors = [colors[entity["phrase"]] for entity in entities for _ in entity["boxes"]]
    if masks is not None and len(masks):
        pixels = np.asarray(image, dtype=np.float32)
        for mask, color in zip(masks, box_colors):
            rgb = np.asarray(PIL.ImageColor.getrgb(color), dtype=np.float32)
            pixels[mask] = (1 - MASK_ALPHA) * pixels[mask] + MASK_ALPHA * rgb
        image = PIL.Image.fromarray(pixels.round().astype(np.uint8))
    draw = PIL.ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 250))
    radius = max(3, round(max(image.size) / 100))
    font = PIL.ImageFont.load_default(size=max(10, round(max(image.size) / 40)))
    for entity in entities:
        color = colors[entity["phrase"]]
        for box in entity["boxes"]:
            draw.rectangle(box, outline=color, width=line)
            if entity["phrase"]:
                left, top, right, bottom = draw.textbbox((box[0], box[1]), entity["phrase"], font=font)
                y = box[1] - (bottom - top) - 2 * line if box[1] >= bottom - top + 2 * line else box[1]
                label = (box[0], y, box[0] + right - left + 2 * line, y + bottom - top + 2 * line)
                draw.rectangle(label, fill=color)
                draw.text((box[0] + line, y + line - (top - box[1])), entity["phrase"], fill="white", font=font)
        for x, y in entity["points"]:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)
    keypoints = {
        entity["phrase"].replace(" ", "_"): entity["points"][0] for entity in entities if entity["points"]
    }
    for first, second in COCO_SKELETON:
        start, end = keypoints.get(COCO_KEYPOINTS[first - 1]), keypoints.get(COCO_KEYPOINTS[second - 1])
        if start and end:
            draw.line((*start, *end), fill="green", width=max(3, line))
    return image
