"""OCR-intensive samples (SPHINX-X's OCR data, spec section 11): rendered words, numbers, 4-character codes, receipts
and tables in varied fonts, sizes, colours, backgrounds, positions and aspect ratios."""

import random
import zlib

import PIL.ImageDraw

from .render import (
    FONT_FILES,
    background,
    choose,
    dark_color,
    draw_text,
    font_metrics,
    largest_font_size,
    light_color,
    line_height,
    sample_aspect,
    sample_size,
    text_colors,
    text_width,
)
from .sample import Sample, drawn_object


OCR_TASKS = {"ocr_word": 0.2, "ocr_number": 0.15, "ocr_code": 0.3, "ocr_receipt": 0.2, "ocr_table": 0.15}
MIN_FONT_SIZE = 14
MAX_ATTEMPTS = 20

WORDS = (
    "apple", "river", "garden", "window", "silver", "orange", "planet", "market", "bridge", "candle", "forest",
    "yellow", "summer", "winter", "spring", "autumn", "coffee", "pencil", "rocket", "guitar", "castle", "butter",
    "island", "jacket", "ladder", "mirror", "needle", "pepper", "rabbit", "saddle", "tunnel", "velvet", "wallet",
    "anchor", "basket", "camera", "dragon", "engine", "feather", "harbor", "kitten", "lemon", "meadow", "number",
    "office", "pillow", "quiet", "ribbon", "shadow", "ticket", "violet", "wonder", "zebra", "cloud", "stone", "light",
    "green", "house", "music", "ocean", "paper", "smile", "table", "train", "water", "world", "bread", "chair",
    "dream", "earth", "flame", "grape", "heart", "juice", "knife", "lucky", "money", "night", "piano", "queen",
    "radio", "sugar", "tiger", "uncle", "voice", "wheel", "youth", "north", "south", "east", "west", "open",
    "close", "exit", "enter", "push", "pull", "stop", "sale", "free", "hotel", "cafe", "bank", "park", "road",
    "street", "avenue", "station", "airport", "library", "school", "museum", "theater", "bakery", "pharmacy",
    "welcome", "danger", "caution", "private", "public", "delivery", "express", "special", "fresh",
)
STORES = (
    "CORNER MARKET", "FRESH FOODS", "CITY CAFE", "GREEN GROCER", "BOOK NOOK", "SUNRISE BAKERY", "MAIN ST DELI",
    "HARBOR FISH", "TECH DEPOT", "PAPER & INK", "ROSE FLORIST", "DAILY MART", "BLUE DINER", "HILLTOP PANTRY",
)
ITEMS = (
    "Coffee", "Tea", "Bagel", "Muffin", "Croissant", "Milk", "Eggs", "Bread", "Butter", "Cheese", "Apples",
    "Bananas", "Oranges", "Tomatoes", "Onions", "Rice", "Pasta", "Olive oil", "Yogurt", "Juice", "Water",
    "Chocolate", "Cookies", "Salad", "Sandwich", "Soup", "Notebook", "Pens", "Batteries", "Soap", "Shampoo",
    "Tissues", "Candles", "Flowers", "Magazine", "Stamps", "Honey", "Jam", "Cereal", "Chicken",
)
TOTAL_LABELS = ("TOTAL", "Total", "Total:")
# A receipt line is ~10 em wide and a receipt 5-9 lines tall: beyond 3:1 either way the font would be illegible.
RECEIPT_ASPECTS = {"wide": (2.0, 3.0), "tall": (1 / 3.0, 1 / 2.0), "square": (1 / 2.0, 2.0)}
TABLE_WORDS = (
    "red", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "king", "gold", "iron", "salt", "wind",
    "rain", "snow", "lake", "hill", "road", "door", "lamp", "book", "cup", "key", "box", "map", "pen", "car",
)
# Letters and digits that no font confuses (no 0/O, 1/I): an exact-match score then measures reading, not guessing.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 4
CODE_LABELS = ("CODE", "ID", "REF", "PIN", "KEY", "No.")
# One code in eight (by CRC) is reserved for held-out data, so a held-out code never appears in training.
HELDOUT_CODE_BUCKETS = 8

QUESTIONS = {
    "ocr_word": ("What is written in the image?", "What text is shown in the image?", "Read the text in the image."),
    "ocr_number": ("What number is shown in the image?", "What is written in the image?"),
    "ocr_code": ("What is the 4-character code in the image?",),
}


def code_split(code: str) -> str:
    """The split a code belongs to: "heldout" for one CRC bucket in `HELDOUT_CODE_BUCKETS`, "train" otherwise."""
    return "heldout" if zlib.crc32(code.encode()) % HELDOUT_CODE_BUCKETS == 0 else "train"


def random_code(rng: random.Random, split: str) -> str:
    """A `CODE_LENGTH`-character code of `CODE_ALPHABET` from `split`'s part of the code space."""
    while True:
        code = "".join(rng.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if code_split(code) == split:
            return code


def random_number(rng: random.Random) -> str:
    """A number as printed: integer, grouped thousands, decimal, negative, percentage, price, date, time or phone."""
    kind = rng.choice(("integer", "grouped", "decimal", "negative", "percent", "price", "date", "time", "phone"))
    if kind == "integer":
        return str(rng.randint(0, 99999))
    if kind == "grouped":
        return f"{rng.randint(1000, 9999999):,}"
    if kind == "decimal":
        return f"{rng.uniform(0, 1000):.{rng.randint(1, 3)}f}"
    if kind == "negative":
        return f"-{rng.uniform(0, 100):.{rng.randint(0, 2)}f}"
    if kind == "percent":
        return f"{rng.randint(0, 100)}%"
    if kind == "price":
        return f"${rng.randint(0, 999)}.{rng.randint(0, 99):02d}"
    if kind == "date":
        return f"{rng.randint(1950, 2049)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == "time":
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    return f"{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"


def styled(rng: random.Random, words: list[str]) -> list[str]:
    """The words in one case style: lower, Title or UPPER."""
    style = rng.choice((str.lower, str.title, str.upper))
    return [style(word) for word in words]


def text_block_sample(rng: random.Random, max_side: int, layouts: list[list[str]], task: str, question: str,
                      answer: str, details: dict) -> Sample | None:
    """Lines of text on a background. Of the candidate `layouts` (lists of lines), the one that fits the largest
    font is drawn at a random size and position; `None` if none fits at `MIN_FONT_SIZE`."""
    width, height = size = sample_size(rng, max_side)
    font_name = rng.choice(FONT_FILES)
    margin_x, margin_y = rng.uniform(0.03, 0.12) * width, rng.uniform(0.03, 0.12) * height
    room_width, room_height = width - 2 * margin_x, height - 2 * margin_y
    fits = [(largest_font_size(font_name, lines, room_width, room_height), lines) for lines in layouts]
    largest, lines = max(fits, key=lambda fit: fit[0])
    if largest < MIN_FONT_SIZE:
        return None
    font_size = rng.randint(max(MIN_FONT_SIZE, largest // 2), largest)
    paper, ink = text_colors(rng)
    image = background(rng, size, paper)
    draw = PIL.ImageDraw.Draw(image)
    widths = [text_width(font_name, font_size, line) for line in lines]
    block_width, block_height = max(widths), line_height(font_size) * len(lines)
    left = margin_x + rng.uniform(0, max(0.0, room_width - block_width))
    top = margin_y + rng.uniform(0, max(0.0, room_height - block_height))
    centred = rng.random() < 0.5
    objects = []
    for row, (line, line_width) in enumerate(zip(lines, widths)):
        x = left + (block_width - line_width) / 2 if centred else left
        box = draw_text(draw, (x, top + row * line_height(font_size)), line, font_name, font_size, ink)
        objects.append(drawn_object(box, text=line))
    details = {"font": font_name, "font_size": font_size, **details}
    return Sample(image, task, question, answer, objects, details=details)


def word_sample(rng: random.Random, split: str, max_side: int) -> Sample | None:
    words = styled(rng, rng.sample(WORDS, rng.randint(1, 3)))
    layouts = [[" ".join(words)]] + ([words] if len(words) > 1 else [])
    answer = " ".join(words)
    return text_block_sample(rng, max_side, layouts, "ocr_word", rng.choice(QUESTIONS["ocr_word"]), answer, {})


def number_sample(rng: random.Random, split: str, max_side: int) -> Sample | None:
    number = random_number(rng)
    return text_block_sample(rng, max_side, [[number]], "ocr_number", rng.choice(QUESTIONS["ocr_number"]), number, {})


def code_sample(rng: random.Random, split: str, max_side: int) -> Sample | None:
    """A code alone, under a label, or after one ("ID: K7QF"); the answer is the code only."""
    code = random_code(rng, split)
    label = rng.choice(CODE_LABELS)
    lines = rng.choice(([code], [label, code], [f"{label}: {code}"]))
    return text_block_sample(rng, max_side, [lines], "ocr_code", QUESTIONS["ocr_code"][0], code, {"code": code})


def price_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def receipt_sample(rng: random.Random, split: str, max_side: int) -> Sample | None:
    """A paper receipt on a table: store name, 2-6 items with prices, a rule and the total (the exact sum).

    The receipt sets the scale: the image is the paper plus a margin, stretched to a drawn aspect ratio (at most
    3:1 either way), and the font is as large as the long side allows; items are dropped until it is legible,
    `None` if even two are not.
    Questions: the total, the price of one item, or the number of items.
    """
    font_name = rng.choice(FONT_FILES)
    store, total_label = rng.choice(STORES), rng.choice(TOTAL_LABELS)
    names = rng.sample(ITEMS, rng.randint(2, 6))
    cents = [rng.randint(50, 4999) for _ in names]
    aspect = sample_aspect(rng, {"tall": 0.45, "square": 0.35, "wide": 0.2}, RECEIPT_ASPECTS)
    long_side = rng.randint(int(0.75 * max_side), max_side)
    margin = rng.uniform(1.05, 1.4)  # image side / paper side along the tighter axis
    pad_em = 0.6  # paper around the text
    while True:
        total = sum(cents)
        # Lengths in em (multiples of the font size). Lines: store, items, rule, total; 1 em between a name and
        # its price.
        pairs = [(name, price_text(c)) for name, c in zip(names, cents)] + [(total_label, price_text(total))]
        widths = [text_width(font_name, 100, store)] + [text_width(font_name, 100, a + b) + 100 for a, b in pairs]
        content_em = max(widths) / 100
        paper_em = (content_em + 2 * pad_em, 1.3 * (len(names) + 3) + 2 * pad_em)
        if paper_em[0] / paper_em[1] > aspect:
            image_em = (paper_em[0] * margin, paper_em[0] * margin / aspect)
        else:
            image_em = (paper_em[1] * margin * aspect, paper_em[1] * margin)
        font_size = min(40, int(long_side / max(image_em)))
        if font_size >= MIN_FONT_SIZE or len(names) == 2:
            break
        names, cents = names[:-1], cents[:-1]
    if font_size < MIN_FONT_SIZE:
        return None
    width, height = size = round(image_em[0] * font_size), round(image_em[1] * font_size)
    step, pad, content_width = line_height(font_size), pad_em * font_size, content_em * font_size
    paper_width, paper_height = paper_em[0] * font_size, paper_em[1] * font_size
    paper_left, paper_top = rng.uniform(0, width - paper_width), rng.uniform(0, height - paper_height)

    image = background(rng, size, tuple(rng.randint(90, 200) for _ in range(3)))
    draw = PIL.ImageDraw.Draw(image)
    draw.rectangle([paper_left, paper_top, paper_left + paper_width, paper_top + paper_height], fill=light_color(rng))
    ink = dark_color(rng)
    left, right, y = paper_left + pad, paper_left + pad + content_width, paper_top + pad
    objects = []

    def line_pair(label: str, value: str, y: float):
        objects.append(drawn_object(draw_text(draw, (left, y), label, font_name, font_size, ink), text=label))
        x = right - text_width(font_name, font_size, value)
        objects.append(drawn_object(draw_text(draw, (x, y), value, font_name, font_size, ink), text=value))

    store_x = left + (content_width - text_width(font_name, font_size, store)) / 2
    objects.append(drawn_object(draw_text(draw, (store_x, y), store, font_name, font_size, ink), text=store))
    for name, c in zip(names, cents):
        y += step
        line_pair(name, price_text(c), y)
    y += step
    rule_y = y + step / 2
    draw.line([(left, rule_y), (right, rule_y)], fill=ink, width=max(1, font_size // 12))
    line_pair(total_label, price_text(total), y + step)

    items = [{"name": name, "price": price_text(c)} for name, c in zip(names, cents)]
    kind = choose(rng, {"total": 0.5, "price": 0.3, "count": 0.2})
    if kind == "total":
        question, answer = "What is the total?", price_text(total)
    elif kind == "price":
        item = rng.choice(items)
        question, answer = f"What is the price of {item['name']}?", item["price"]
    else:
        question, answer = "How many items are on the receipt?", str(len(items))
    details = {"store": store, "items": items, "total": price_text(total), "question_kind": kind,
               "font": font_name, "font_size": font_size}
    return Sample(image, "ocr_receipt", question, answer, objects, details=details)


def table_sample(rng: random.Random, split: str, max_side: int) -> Sample | None:
    """A ruled grid of short words and numbers; the question names a cell by 1-based row and column."""
    width, height = size = sample_size(rng, max_side)
    aspect = width / height
    if aspect >= 2:
        rows, cols = rng.randint(2, 3), rng.randint(3, 5)
    elif aspect <= 0.5:
        rows, cols = rng.randint(3, 7), 2
    else:
        rows, cols = rng.randint(2, 4), rng.randint(2, 4)
    pool = list(TABLE_WORDS) + [str(n) for n in rng.sample(range(10, 1000), rows * cols)]
    values = rng.sample(pool, rows * cols)
    cells = [values[r * cols : (r + 1) * cols] for r in range(rows)]
    font_name = rng.choice(FONT_FILES)
    margin_x, margin_y = rng.uniform(0.02, 0.1) * width, rng.uniform(0.02, 0.1) * height
    table_width = rng.uniform(0.7, 1.0) * (width - 2 * margin_x)
    table_height = rng.uniform(0.7, 1.0) * (height - 2 * margin_y)
    cell_width, cell_height = table_width / cols, table_height / rows
    widest = max(values, key=lambda value: text_width(font_name, 100, value))
    largest = largest_font_size(font_name, [widest], 0.85 * cell_width, 0.95 * cell_height, cap=40)
    if largest < MIN_FONT_SIZE:
        return None
    font_size = rng.randint(max(MIN_FONT_SIZE, largest * 2 // 3), largest)
    paper, ink = text_colors(rng, dark_mode_probability=0.1)
    image = background(rng, size, paper)
    draw = PIL.ImageDraw.Draw(image)
    table_left = margin_x + rng.uniform(0, width - 2 * margin_x - table_width)
    table_top = margin_y + rng.uniform(0, height - 2 * margin_y - table_height)
    if rng.random() < 0.5:  # zebra stripes, kept within 30 levels of the paper so the ink still contrasts
        stripe = tuple(max(0, min(255, c + (-25 if sum(paper) > 384 else 25))) for c in paper)
        for r in range(1, rows, 2):
            top = table_top + r * cell_height
            draw.rectangle([table_left, top, table_left + table_width, top + cell_height], fill=stripe)
    rule_width = rng.randint(1, 2)
    for r in range(rows + 1):
        y = table_top + r * cell_height
        draw.line([(table_left, y), (table_left + table_width, y)], fill=ink, width=rule_width)
    for c in range(cols + 1):
        x = table_left + c * cell_width
        draw.line([(x, table_top), (x, table_top + table_height)], fill=ink, width=rule_width)
    ascent, descent = font_metrics(font_name, font_size)
    objects = []
    for r, row in enumerate(cells):
        for c, value in enumerate(row):
            x = table_left + c * cell_width + (cell_width - text_width(font_name, font_size, value)) / 2
            y = table_top + r * cell_height + (cell_height - ascent - descent) / 2
            objects.append(drawn_object(draw_text(draw, (x, y), value, font_name, font_size, ink), text=value))
    row, col = rng.randint(1, rows), rng.randint(1, cols)
    question = f"What is in row {row}, column {col}?"
    details = {"cells": cells, "row": row, "column": col, "font": font_name, "font_size": font_size}
    return Sample(image, "ocr_table", question, cells[row - 1][col - 1], objects, details=details)


# One signature, `(rng, split, max_side) -> Sample | None`; only codes depend on the split.
RENDERERS = {
    "ocr_word": word_sample,
    "ocr_number": number_sample,
    "ocr_code": code_sample,
    "ocr_receipt": receipt_sample,
    "ocr_table": table_sample,
}
# The tasks whose images need `MIN_MAX_SIDE_DOCUMENTS` pixels.
DOCUMENT_TASKS = ("ocr_receipt", "ocr_table")


def ocr_sample(rng: random.Random, task: str | None = None, split: str = "train", max_side: int = 512) -> Sample:
    """One OCR sample of `task` (one of `OCR_TASKS`; drawn by its weight when `None`). Content that does not fit
    the drawn image size at a legible font is redrawn from the same generator, so the result is still a function
    of `rng` alone."""
    task = task or choose(rng, OCR_TASKS)
    for _ in range(MAX_ATTEMPTS):
        sample = RENDERERS[task](rng, split, max_side)
        if sample is not None:
            return sample
    raise RuntimeError(f"No legible {task} image in {MAX_ATTEMPTS} attempts at max_side={max_side}.")
