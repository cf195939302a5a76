"""Multiple choice: MMBench, SEED-Bench (image questions), ScienceQA-IMG, MMVP (with its pair accuracy).

The choices are listed `"A. ...\\nB. ..."` after the hint and the question (spec 10: multiple-choice patterns are
filled with hint, question and choices). ScienceQA keeps the reference's pattern `{}` and output suffix
`" The answer is"`; the others end with LLaVA's instruction to answer with the letter, which SPHINX-X was trained on
(the reference's MMBench / SEED patterns are not in its published annotation config). The predicted letter is
read with `extract_letter`.
"""

import re
from collections import defaultdict

from .data import read_rows
from .task import Sample, Task, percent, rgb


LETTER_INSTRUCTION = "\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJ"


def format_choices(choices: list[str]) -> str:
    """`["cat", "dog"]` -> `"A. cat\\nB. dog"`."""
    return "\n".join(f"{LETTERS[index]}. {choice}" for index, choice in enumerate(choices))


def extract_letter(answer: str, choices: list[str]) -> str:
    """The option letter an answer picks, or `""` when it picks none.

    In order: a letter standing alone at the start (`"B"`, `"B."`, `"(B) dog"`, `"B: dog"`), `"answer is B"`, the
    first letter standing alone anywhere (`"I think (B)"`), then the text of exactly one choice
    (`"a dog"` -> B). Only letters of existing choices count.
    """
    valid = LETTERS[: len(choices)]
    text = answer.strip()
    patterns = (
        rf"^\(?([{valid}])\)?(?:[.:,)\s]|$)",
        rf"answer is:?\s*\(?([{valid}])\b",
        rf"(?:^|[\s(])([{valid}])(?:[.:,)\s]|$)",
    )
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    lowered = text.lower()
    named = [index for index, choice in enumerate(choices) if choice and str(choice).lower() in lowered]
    return valid[named[0]] if len(named) == 1 else ""


def score_letter(answer: str, reference: dict) -> dict:
    """`reference`: `{"choices": [...], "answer": "B"}` plus grouping keys copied into the record."""
    letter = extract_letter(answer, reference["choices"])
    extra = {key: value for key, value in reference.items() if key not in ("choices", "answer")}
    return {"letter": letter, "answer": reference["answer"], "correct": letter == reference["answer"], **extra}


def accuracy(records: list[dict]) -> dict:
    return {"accuracy": percent(record["correct"] for record in records)}


def mmvp_accuracy(records: list[dict]) -> dict:
    """Question accuracy, and pair accuracy: a pair (two images, same question, opposite answers) counts when both
    of its questions are right (MMVP's headline number)."""
    pairs = defaultdict(list)
    for record in records:
        pairs[record["pair"]].append(record["correct"])
    complete = [all(answers) for answers in pairs.values() if len(answers) == 2]
    return {**accuracy(records), "pair_accuracy": percent(complete), "pairs": len(complete)}


def present(value) -> bool:
    return value is not None and str(value).strip() not in ("", "nan", "None")


def mmbench_sample(row: dict) -> Sample:
    choices = [str(row[letter]) for letter in "ABCD" if present(row.get(letter))]
    hint = f"{row['hint']}\n" if present(row.get("hint")) else ""
    return Sample(
        id=str(row["index"]),
        image=rgb(row["image"]),
        question=f"{hint}{row['question']}\n{format_choices(choices)}{LETTER_INSTRUCTION}",
        reference={"choices": choices, "answer": row["answer"], "category": row.get("category")},
    )


def seed_sample(row: dict) -> Sample:
    choices = [str(row[f"choice_{letter}"]) for letter in "abcd"]
    images = row["image"]
    return Sample(
        id=str(row["question_id"]),
        image=rgb(images[0] if isinstance(images, list) else images),
        question=f"{row['question']}\n{format_choices(choices)}{LETTER_INSTRUCTION}",
        reference={"choices": choices, "answer": row["answer"]},
    )


def scienceqa_sample(row: dict) -> Sample:
    choices = [str(choice) for choice in row["choices"]]
    context = f"Context: {row['hint']}\n" if present(row.get("hint")) else ""
    return Sample(
        image=rgb(row["image"]),
        question=f"{context}{row['question']}\n{format_choices(choices)}",
        reference={"choices": choices, "answer": LETTERS[int(row["answer"])]},
        suffix=" The answer is",
    )


def mmvp_sample(row: dict) -> Sample:
    choices = [choice.strip() for choice in re.findall(r"\([a-z]\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", row["Options"])]
    index = int(row["Index"])  # 1-based; questions 2k-1 and 2k form a pair
    return Sample(
        id=str(index),
        image=rgb(row["image"]),
        question=f"{row['Question']}\n{format_choices(choices)}{LETTER_INSTRUCTION}",
        reference={"choices": choices, "answer": row["Correct Answer"].strip().strip("()").upper(),
                   "pair": (index - 1) // 2},
    )


SEED = ("lmms-lab-encoder/SEED-Bench", None, "test")


def seed_image_rows(data_files):
    """SEED-Bench mixes image and video questions; its image dimension is the `data_type == "image"` rows."""
    return read_rows(SEED, data_files).filter(lambda data_type: data_type == "image", input_columns="data_type")


TASKS = [
    Task("mmbench_en_dev", "accuracy", ("lmms-lab-encoder/MMBench", "en", "dev"), 10, mmbench_sample, score_letter,
         accuracy),
    Task("seedbench", "accuracy", SEED, 10, seed_sample, score_letter, accuracy, load=seed_image_rows),
    Task("scienceqa_img", "accuracy", ("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "test"), 10,
         scienceqa_sample, score_letter, accuracy),
    Task("mmvp", "pair_accuracy", ("lmms-lab-eval/MMVP", None, "train"), 10, mmvp_sample, score_letter,
         mmvp_accuracy, paper={"SPHINX-MoE": 49.33}),
]
