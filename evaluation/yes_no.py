"""Yes / no questions: POPE (accuracy, precision, recall, F1 of "yes" answers) and MME (perception and cognition
scores). Prompt: the reference's single word or phrase pattern (spec 10)."""

from collections import defaultdict

from .task import SHORT_ANSWER, Sample, Task, percent, rgb


MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def pope_answer(answer: str) -> str:
    """POPE's reading of an answer (LLaVA's `eval_pope.py`): the first sentence is "no" when it contains the word
    "no", "No" or "not", else "yes"."""
    sentence = answer.strip().split(".")[0].replace(",", "")
    return "no" if {"no", "No", "not"} & set(sentence.split()) else "yes"


def mme_answer(answer: str) -> str:
    """MME's reading of an answer (its `calculation.py`): "yes" / "no" exactly, else by the first four characters,
    else "other" (always wrong)."""
    answer = answer.strip().lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def yes_no_sample(row: dict) -> Sample:
    return Sample(image=rgb(row["image"]), question=SHORT_ANSWER.format(row["question"].strip()),
                  reference={"answer": row["answer"].strip().lower().rstrip("."), "category": row["category"],
                             "image": str(row["question_id"])})


def score_pope(answer: str, reference: dict) -> dict:
    predicted = pope_answer(answer)
    return {"predicted": predicted, "answer": reference["answer"], "category": reference["category"],
            "correct": predicted == reference["answer"]}


def score_mme(answer: str, reference: dict) -> dict:
    predicted = mme_answer(answer)
    return {"predicted": predicted, "answer": reference["answer"], "category": reference["category"],
            "image": reference["image"], "correct": predicted == reference["answer"]}


def pope_metrics(records: list[dict]) -> dict:
    """Accuracy, and precision / recall / F1 with "yes" as the positive class, plus the share of "yes" answers."""
    true_positive = sum(r["predicted"] == "yes" and r["answer"] == "yes" for r in records)
    predicted_yes = sum(r["predicted"] == "yes" for r in records)
    actual_yes = sum(r["answer"] == "yes" for r in records)
    precision = true_positive / predicted_yes if predicted_yes else 0.0
    recall = true_positive / actual_yes if actual_yes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": percent(r["correct"] for r in records), "precision": 100 * precision,
            "recall": 100 * recall, "f1": 100 * f1, "yes_ratio": percent(r["predicted"] == "yes" for r in records)}


def mme_scores(records: list[dict]) -> dict:
    """Per category: accuracy over questions plus accuracy+ over images (both of an image's questions right), each
    in percent, so at most 200; perception and cognition are the sums over their categories (at most 2000 / 800)."""
    by_category = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_category[record["category"]][record["image"]].append(record["correct"])
    result = {}
    for category, images in by_category.items():
        answers = [correct for image in images.values() for correct in image]
        result[category] = percent(answers) + percent(all(image) for image in images.values())
    result["perception"] = sum(result.get(category, 0.0) for category in MME_PERCEPTION)
    result["cognition"] = sum(result.get(category, 0.0) for category in MME_COGNITION)
    return result


TASKS = [
    Task("pope", "f1", ("lmms-lab-encoder/POPE", None, "test"), 10, yes_no_sample, score_pope, pope_metrics),
    Task("mme", "perception", ("lmms-lab-encoder/MME", None, "test"), 10, yes_no_sample, score_mme, mme_scores),
]
