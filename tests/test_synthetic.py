"""Synthetic OCR, Set-of-Mark and grounding data: reproducible, answers agree with the pixels, boxes in the SPHINX
format, wide and tall images, and rows the SPHINX-X processor turns into the expected image placeholders."""

import copy
import io
import json
from collections import Counter

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
from datasets import Image, List, load_from_disk

from sphinx_x.training.synthetic import (
    CODE_ALPHABET,
    COLORS,
    REC_PROMPT,
    box_iou,
    box_to_pixels,
    build_dataset,
    code_split,
    format_box,
    generate_sample,
    make_mixture,
    normalize_box,
    parse_boxes,
)
from sphinx_x.training.synthetic.dataset import encode_png
from sphinx_x.training.synthetic.scene import SHAPES, draw_shape, mark_center


TOKENS_PER_VIEW = 259
MIXED = {"ocr": 12, "set_of_mark": 12, "grounding": 12}


@pytest.fixture(scope="module")
def mixed():
    return build_dataset(MIXED, seed=7)


def image_bytes(dataset) -> list[bytes]:
    return [row[0]["bytes"] for row in dataset.cast_column("images", List(Image(decode=False)))["images"]]


def pixels(sample) -> np.ndarray:
    return np.asarray(sample.image)


def box_pixels(image: np.ndarray, box) -> np.ndarray:
    """`[h, w, 3]` pixels inside a float pixel box."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return image[y1:y2, x1:x2]


def palette_share(region: np.ndarray, rgb) -> float:
    return float(np.all(region == np.array(rgb, np.uint8), axis=-1).mean())


# Determinism and splits


def test_same_seed_same_bytes_and_texts_other_seed_differs(mixed):
    again = build_dataset(MIXED, seed=7)
    other = build_dataset(MIXED, seed=8)
    assert image_bytes(again) == image_bytes(mixed)
    for column in ("messages", "answer", "objects", "details", "sample_id"):
        assert list(again[column]) == list(mixed[column])
    differing = sum(a != b for a, b in zip(image_bytes(other), image_bytes(mixed)))
    assert differing == len(mixed)
    assert list(other["question"]) != list(mixed["question"])


def test_a_sample_is_rebuilt_from_its_id_alone(mixed):
    row = mixed[29]
    seed, split, key, index = row["sample_id"].split("/")
    sample = generate_sample(key, int(index), int(seed), split)
    assert (sample.question, sample.answer) == (row["question"], row["answer"])
    assert np.array_equal(pixels(sample), np.asarray(row["images"][0]))


def test_train_and_heldout_never_share_a_generator_or_a_code():
    splits = make_mixture(seed=0, sizes={"ocr_code": 40, "som_color": 10}, heldout_sizes={"ocr_code": 40})
    train, heldout = splits["train"], splits["heldout"]
    train_codes = {answer for answer, task in zip(train["answer"], train["task"]) if task == "ocr_code"}
    heldout_codes = set(heldout["answer"])
    assert all(code_split(code) == "train" for code in train_codes)
    assert all(code_split(code) == "heldout" for code in heldout_codes)
    assert not train_codes & heldout_codes
    assert all(len(code) == 4 and set(code) <= set(CODE_ALPHABET) for code in train_codes | heldout_codes)
    assert Counter(train["task"]) == {"ocr_code": 40, "som_color": 10}
    assert len(set(image_bytes(train)) & set(image_bytes(heldout))) == 0


@pytest.mark.parametrize("key", ["som_color", "som_label", "ocr_code", "ocr_word", "grounding_rec"])
def test_scenes_codes_and_words_render_at_a_small_canvas(key):
    # The demo model's data is drawn at its 256-px canvas, where no resampling blurs the marks and letters.
    for index in range(20):
        sample = generate_sample(key, index, max_side=256)
        assert max(sample.image.size) <= 256
        assert all(0 <= v <= max(sample.image.size) for o in sample.objects for v in o["box"])


def test_unknown_kind_split_and_tiny_images_are_refused():
    with pytest.raises(ValueError, match="Unknown sample kind"):
        generate_sample("handwriting", 0)
    with pytest.raises(ValueError, match="split"):
        generate_sample("ocr", 0, split="test")
    with pytest.raises(ValueError, match="max_side must be at least 384"):
        generate_sample("ocr", 0, max_side=200)
    with pytest.raises(ValueError, match="max_side must be at least 384"):
        generate_sample("ocr_table", 0, max_side=256)
    with pytest.raises(ValueError, match="max_side must be at least 192"):
        generate_sample("som_color", 0, max_side=128)
    with pytest.raises(ValueError, match="placement"):
        generate_sample("grounding", 0, placement="centre")


# Answers agree with what was drawn


def test_text_answers_are_the_drawn_text():
    for task in ("ocr_word", "ocr_number", "ocr_code"):
        for index in range(15):
            sample = generate_sample(task, index)
            drawn = " ".join(item["text"] for item in sample.objects)
            if task == "ocr_code":  # the code alone, under a label or after "ID: "
                assert drawn.split()[-1] == sample.answer
            else:
                assert drawn == sample.answer
            image = pixels(sample)
            for item in sample.objects:  # ink in every text box: not one flat colour
                assert box_pixels(image, item["box"]).reshape(-1, 3).std(axis=0).max() > 20


def test_receipt_total_is_the_sum_and_every_answer_is_printed():
    kinds = Counter()
    for index in range(30):
        sample = generate_sample("ocr_receipt", index)
        details = sample.details
        cents = [round(float(item["price"]) * 100) for item in details["items"]]
        assert round(float(details["total"]) * 100) == sum(cents)
        printed = [item["text"] for item in sample.objects]
        assert details["store"] in printed and details["total"] in printed
        for item in details["items"]:
            assert item["name"] in printed and item["price"] in printed
        kind = details["question_kind"]
        kinds[kind] += 1
        expected = {"total": details["total"], "count": str(len(details["items"]))}
        if kind == "price":
            name = sample.question.removeprefix("What is the price of ").removesuffix("?")
            expected["price"] = next(item["price"] for item in details["items"] if item["name"] == name)
        assert sample.answer == expected[kind]
    assert set(kinds) == {"total", "price", "count"}


def test_table_answer_is_the_named_cell():
    for index in range(15):
        sample = generate_sample("ocr_table", index)
        cells, row, column = sample.details["cells"], sample.details["row"], sample.details["column"]
        assert sample.question == f"What is in row {row}, column {column}?"
        assert sample.answer == cells[row - 1][column - 1]
        texts = [item["text"] for item in sample.objects]
        assert texts == [value for line in cells for value in line]
        # The named cell is drawn in row order: its box lies below the boxes of the rows above it.
        box = sample.objects[(row - 1) * len(cells[0]) + column - 1]["box"]
        assert all(item["box"][1] < box[1] for item in sample.objects[: (row - 1) * len(cells[0])])


def test_set_of_mark_colours_and_shapes_come_from_the_pixels():
    """Every marked shape covers its box with exactly its palette colour, the mark label sits at the centre, and
    the colour answer is the palette colour that dominates the box."""
    for index in range(40):
        sample = generate_sample("set_of_mark", index)
        image = pixels(sample)
        marks = sorted(item["mark"] for item in sample.objects)
        assert marks == list(range(1, len(marks) + 1))
        for item in sample.objects:
            region = box_pixels(image, item["box"])
            shares = {name: palette_share(region, rgb) for name, rgb in COLORS.items()}
            assert max(shares, key=shares.get) == item["color"]
            assert shares[item["color"]] > 0.25
        if sample.task in ("som_color", "som_shape"):
            target = next(item for item in sample.objects if item["mark"] == sample.details["mark"])
            assert sample.answer == target["color" if sample.task == "som_color" else "shape"]
            x1, y1, x2, y2 = target["box"]
            if target["shape"] != "triangle":  # a triangle's label sits at its centroid, lower
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                label = box_pixels(image, [cx - 4, cy - 4, cx + 4, cy + 4]).reshape(-1, 3).astype(int)
                # Antialiased black digits on white: grey levels only, some pure white.
                assert (label.max(axis=1) == label.min(axis=1)).all() and (label == 255).all(axis=1).any()


def test_set_of_mark_position_answers_follow_the_boxes():
    seen = Counter()
    for index in range(30):
        for task in ("som_relation", "som_extreme", "som_label"):
            sample = generate_sample(task, index)
            by_mark = {item["mark"]: item for item in sample.objects}
            seen[sample.answer if task == "som_relation" else task] += 1
            if task == "som_relation":
                first, second = (by_mark[mark]["box"] for mark in sample.details["marks"])
                if "left or to the right" in sample.question:
                    assert (first[2] < second[0]) == (sample.answer == "left")
                    assert first[2] < second[0] or second[2] < first[0]
                else:
                    assert (first[3] < second[1]) == (sample.answer == "above")
                    assert first[3] < second[1] or second[3] < first[1]
            elif task == "som_extreme":
                target = by_mark[int(sample.answer)]["box"]
                others = [item["box"] for item in sample.objects if item["mark"] != int(sample.answer)]
                clear = {"leftmost": lambda o: target[2] < o[0], "rightmost": lambda o: o[2] < target[0],
                         "topmost": lambda o: target[3] < o[1], "bottommost": lambda o: o[3] < target[1]}
                assert all(clear[sample.details["direction"]](box) for box in others)
            else:
                color, shape = sample.question.removeprefix("Which label is on the ").removesuffix("?").split()
                matches = [item["mark"] for item in sample.objects if (item["color"], item["shape"]) == (color, shape)]
                assert matches == [int(sample.answer)]
    assert {"left", "right", "above", "below"} <= set(seen)


@pytest.mark.parametrize("placement", ["top_left", "center"])
def test_grounding_boxes_lie_on_the_described_shape(placement):
    for index in range(40):
        sample = generate_sample("grounding_rec", index, placement=placement)
        width, height = sample.image.size
        assert sample.question == REC_PROMPT.format(sample.details["expression"])
        (grounding,) = parse_boxes(sample.answer)
        assert grounding.phrase == "" and len(grounding.boxes) == 1 and not grounding.points
        box = box_to_pixels(grounding.boxes[0], width, height, placement)
        # Two decimals of the padded square: each corner within half a hundredth of the long side.
        assert np.allclose(box, sample.target_box, atol=0.005 * max(width, height) + 1e-9)
        assert box_iou(box, sample.target_box) > 0.75
        target = next(item for item in sample.objects if item["box"] == sample.target_box)
        centre = pixels(sample)[int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2)]
        assert tuple(centre) == COLORS[target["color"]]
        assert_expression_is_unique(sample.details["expression"], target, sample.objects)


def assert_expression_is_unique(expression: str, target: dict, objects: list[dict]):
    """The expression's colour/shape words and side pick out the target and nothing else."""
    words = expression.removeprefix("the ").split()
    color = words[0] if words[0] in COLORS else None
    shape = next((word for word in words if word in ("circle", "square", "triangle", "diamond", "star")), None)
    matching = [item for item in objects if color in (None, item["color"]) and shape in (None, item["shape"])]
    side = " ".join(words[2:]) if color and shape else ""
    if side:
        ahead = {"on the left": lambda a, b: a[2] < b[0], "on the right": lambda a, b: b[2] < a[0],
                 "at the top": lambda a, b: a[3] < b[1], "at the bottom": lambda a, b: b[3] < a[1]}[side]
        matching = [item for item in matching
                    if all(ahead(item["box"], other["box"]) for other in matching if other is not item)]
    assert matching == [target], expression


def test_region_descriptions_name_the_boxed_shape():
    for index in range(20):
        sample = generate_sample("grounding_reg", index)
        (grounding,) = parse_boxes(sample.question)
        assert grounding.boxes[0] == [round(v, 2) for v in normalize_box(sample.target_box, *sample.image.size)]
        target = next(item for item in sample.objects if item["box"] == sample.target_box)
        assert sample.answer.startswith(f"the {target['color']} {target['shape']}")
        assert_expression_is_unique(sample.answer, target, sample.objects)


# Box format and parser


def test_box_format_and_reference_parser():
    # A 400x100 image on its 400x400 square: top-left keeps y, centring shifts it down by 150 pixels.
    assert format_box([40, 10, 200, 90], 400, 100) == "[0.10,0.03,0.50,0.23]"
    assert format_box([40, 10, 200, 90], 400, 100, placement="center") == "[0.10,0.40,0.50,0.60]"
    assert format_box([10, 40, 90, 200], 100, 400, placement="center") == "[0.40,0.10,0.60,0.50]"
    for placement in ("top_left", "center"):
        for box, width, height in [([40, 10, 200, 90], 400, 100), ([3, 50, 61, 377], 64, 400), ([0, 0, 5, 5], 9, 9)]:
            (parsed,) = parse_boxes(f"It is here {format_box(box, width, height, placement)}.")
            back = box_to_pixels(parsed.boxes[0], width, height, placement)
            assert np.allclose(back, box, atol=0.005 * max(width, height) + 1e-9)
    with pytest.raises(ValueError, match="placement"):
        format_box([0, 0, 1, 1], 2, 2, placement="centre")

    # Spec 9.2: phrase groups last to first, then bare groups last to first; ';' splits boxes and points;
    # numbers need a decimal point.
    text = ("<p>a cat</p> [0.10,0.20,0.30,0.40;0.50,0.60] and <p>dog</p>[0.11,0.22,0.33,0.44] "
            "[0.70,0.80,0.90,1.00] [1,2,3,4]")
    assert [(g.phrase, g.boxes, g.points) for g in parse_boxes(text)] == [
        ("dog", [[0.11, 0.22, 0.33, 0.44]], []),
        ("a cat", [[0.10, 0.20, 0.30, 0.40]], [[0.50, 0.60]]),
        ("", [], []),
        ("", [[0.70, 0.80, 0.90, 1.00]], []),
    ]
    assert parse_boxes("no boxes") == []


def test_box_iou():
    assert box_iou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0
    assert box_iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


# Image sizes and the processor


def test_aspect_ratios_include_wide_and_tall_images(mixed):
    aspects = np.array(mixed["width"]) / np.array(mixed["height"])
    assert (aspects >= 2).mean() > 0.15 and (aspects <= 0.5).mean() > 0.15
    assert ((aspects > 0.5) & (aspects < 2)).mean() > 0.1
    assert aspects.max() <= 4.05 and aspects.min() >= 1 / 4.05
    assert max(list(mixed["width"]) + list(mixed["height"])) <= 512
    small = build_dataset({"ocr_receipt": 4, "ocr_table": 4, "set_of_mark": 4, "grounding": 4}, max_side=384)
    assert max(list(small["width"]) + list(small["height"])) <= 384


def test_png_encoding_is_lossless():
    sample = generate_sample("ocr", 3)
    decoded = PIL.Image.open(io.BytesIO(encode_png(sample.image)))
    assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), pixels(sample))


def test_rows_serialise_and_feed_the_processor(mixed, tiny_model_and_processor, tmp_path):
    processor = tiny_model_and_processor[1]
    mixed.save_to_disk(tmp_path / "synthetic")
    reloaded = load_from_disk(tmp_path / "synthetic")
    assert reloaded[0]["messages"] == mixed[0]["messages"]
    assert np.array_equal(np.asarray(reloaded[5]["images"][0]), np.asarray(mixed[5]["images"][0]))

    rows = {"wide": None, "tall": None, "square": None}
    for row in mixed:
        aspect = row["width"] / row["height"]
        kind = "wide" if aspect >= 2 else "tall" if aspect <= 0.5 else "square" if 0.8 < aspect < 1.25 else None
        if kind and rows[kind] is None:
            rows[kind] = row
    # 2x2 canvas: a wide image skips the bottom row, a tall one the right column (3 views + 2 skips), a near-square
    # one encodes all five views.
    expected = {"wide": 3 * TOKENS_PER_VIEW + 2, "tall": 3 * TOKENS_PER_VIEW + 2, "square": 5 * TOKENS_PER_VIEW}
    for kind, row in rows.items():
        messages = copy.deepcopy(row["messages"])
        messages[0]["content"][0]["image"] = row["images"][0]
        inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        ids = inputs["input_ids"][0]
        assert int((ids == processor.image_token_id).sum()) == expected[kind], kind
        assert inputs["pixel_values"].shape == (1, 3, 1024, 1024)
        text = processor.tokenizer.decode(ids[ids != processor.image_token_id])
        assert f"Human: {row['question']}\n### Assistant: {row['answer']}\n###" in text


def test_family_sizes_draw_every_task():
    splits = make_mixture(seed=1, sizes={"ocr": 30, "set_of_mark": 30, "grounding": 20}, heldout_sizes={"ocr_table": 2})
    tasks = Counter(splits["train"]["task"])
    assert set(tasks) == {"ocr_word", "ocr_number", "ocr_code", "ocr_receipt", "ocr_table", "som_color", "som_shape",
                          "som_relation", "som_extreme", "som_label", "grounding_rec", "grounding_reg"}
    assert sum(tasks.values()) == 80 and list(splits["heldout"]["task"]) == ["ocr_table", "ocr_table"]
    assert json.loads(splits["heldout"][0]["details"])["cells"]


def test_multi_turn_samples_ask_more_questions_about_the_same_image():
    """`turns` keeps the first turn (image and all) and adds distinct questions whose answers follow the drawing, the
    scene's counting question last."""
    for index in range(10):
        for task in ("som_color", "grounding_rec"):
            single, multi = generate_sample(task, index), generate_sample(task, index, turns=4)
            assert (single.question, single.answer) == (multi.question, multi.answer) and not single.follow_ups
            assert np.array_equal(pixels(single), pixels(multi))
            questions = [multi.question] + [question for question, _ in multi.follow_ups]
            assert len(set(questions)) == len(questions) <= 4
            assert multi.follow_ups[-1] == ("How many shapes are in the image?", str(len(multi.objects)))
            for question, answer in multi.follow_ups[:-1]:
                if task == "som_color":
                    mark = int(question.removeprefix("What color is the shape labeled ").removesuffix("?"))
                    assert answer == next(item["color"] for item in multi.objects if item["mark"] == mark)
                else:
                    (grounding,) = parse_boxes(answer)
                    box = box_to_pixels(grounding.boxes[0], *multi.image.size, "top_left")
                    target = max(multi.objects, key=lambda item: box_iou(box, item["box"]))
                    assert box_iou(box, target["box"]) > 0.75
                    expression = question.removeprefix(REC_PROMPT.split("{")[0]).removesuffix(".")
                    assert_expression_is_unique(expression, target, multi.objects)
    assert sum(len(generate_sample("som_color", index, turns=4).follow_ups) for index in range(10)) >= 25

    row = build_dataset({"som_color": 1}, turns=3)[0]
    roles = [message["role"] for message in row["messages"]]
    assert roles == ["user", "assistant"] * 3 and [part["type"] for part in row["messages"][2]["content"]] == ["text"]


def test_single_shape_scenes():
    """Training scenes may hold one shape (make_data's easy end); its questions and boxes still follow the drawing."""
    for index in range(10):
        som = generate_sample("som_color", index, shape_count=(1, 1))
        assert [item["mark"] for item in som.objects] == [1] and som.answer == som.objects[0]["color"]
        grounding = generate_sample("grounding_rec", index, shape_count=(1, 1))
        (parsed,) = parse_boxes(grounding.answer)
        box = box_to_pixels(parsed.boxes[0], *grounding.image.size, "top_left")
        assert len(grounding.objects) == 1 and box_iou(box, grounding.objects[0]["box"]) > 0.75


@pytest.mark.parametrize("shape", SHAPES)
def test_mark_center_recovers_where_the_mark_goes_from_the_box(shape):
    draw = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (200, 200)))
    for x, side in [(3, 48), (17, 61), (40, 97)]:
        region = draw_shape(draw, shape, "red", x, x + 5, side)
        assert mark_center(shape, region.box) == pytest.approx(region.center, abs=1e-9)
