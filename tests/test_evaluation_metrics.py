"""The metrics of `sphinx-x eval` on hand-made answers whose scores are worked out by hand."""

import pytest

from sphinx_x.evaluation.multiple_choice import extract_letter, mmvp_accuracy
from sphinx_x.evaluation.referring import parse_rec_box, score_rec
from sphinx_x.evaluation.short_answer import anls, normalize_vqa_answer, relaxed_correctness, vqa_accuracy
from sphinx_x.evaluation.tasks import resolve_tasks
from sphinx_x.evaluation.yes_no import mme_answer, mme_scores, pope_answer, pope_metrics


@pytest.mark.parametrize("answer, normalized", [
    ("Two dogs.", "2 dogs"),  # number word, final period
    ("The cat", "cat"),  # article, case
    ("dont", "don't"),  # contraction restored
    ("1,000", "1000"),  # a comma between digits goes without a space
    ("3.5", "3.5"),  # a period inside a number stays
    ("hot-dog", "hot dog"),  # punctuation not next to a space becomes a space
    ("left - right", "left right"),
    ("yes!\n", "yes"),
    ("an apple, a pear", "apple pear"),
])
def test_vqa_normalisation(answer, normalized):
    assert normalize_vqa_answer(answer) == normalized


@pytest.mark.parametrize("matches, accuracy", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(matches, accuracy):
    # k of 10 humans agree: the k subsets without one of them see k - 1 matches, the other 10 - k see k.
    references = ["2"] * matches + ["many"] * (10 - matches)
    assert vqa_accuracy("two", references) == pytest.approx(accuracy)


@pytest.mark.parametrize("answer, references, score", [
    ("Hello  World ", ["hello world"], 1.0),  # case and whitespace do not count
    ("abcd", ["abce"], 0.75),  # one edit in four characters
    ("ab", ["ac"], 0.0),  # normalised distance exactly 0.5 is cut to 0
    ("abc", ["abd"], pytest.approx(2 / 3)),  # 1/3 < 0.5 keeps 1 - 1/3
    ("abcd", ["xyz", "abcf", "abcd"], 1.0),  # the best reference counts
    ("", [""], 1.0),
    ("", ["a"], 0.0),
])
def test_anls(answer, references, score):
    assert anls(answer, references) == score


@pytest.mark.parametrize("answer, reference, correct", [
    ("12.3", "12", True),  # 2.5 % off
    ("12.7", "12", False),  # 5.8 % off
    ("5%", "0.05", True),  # a percentage is its fraction
    ("0", "0", True),  # a zero reference needs the exact string
    ("0.0", "0", False),
    ("Yes", "yes", True),
    ("blue", "red", False),
])
def test_chartqa_relaxed_accuracy(answer, reference, correct):
    assert relaxed_correctness(answer, reference) is correct


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("C.", "C"), ("(C) dog", "C"), ("A: cat", "A"), (" A.", "A"),  # ScienceQA's " The answer is A."
    ("The answer is D.", "D"), ("I think (B) is right", "B"), ("a dog", "B"),  # the text of one choice
    ("E", ""), ("none of them", ""), ("cat or dog", ""),  # no such letter; no choice; two choices
])
def test_letter_extraction(answer, letter):
    assert extract_letter(answer, ["cat", "dog", "fish", "bird"]) == letter


def test_mmvp_pair_accuracy():
    records = [{"pair": 0, "correct": True}, {"pair": 0, "correct": True},
               {"pair": 1, "correct": True}, {"pair": 1, "correct": False}]
    assert mmvp_accuracy(records) == {"accuracy": 75.0, "pair_accuracy": 50.0, "pairs": 2}


@pytest.mark.parametrize("answer, reading", [
    ("Yes, there is a dog.", "yes"), ("No, there is not.", "no"), ("There is no dog", "no"),
    ("The dog is not there. Yes.", "no"), ("Nope", "yes"),  # POPE reads the first sentence's words only
])
def test_pope_reading(answer, reading):
    assert pope_answer(answer) == reading


def test_pope_metrics():
    pairs = [("yes", "yes"), ("yes", "yes"), ("yes", "no"), ("no", "yes"), ("no", "no")]
    records = [{"predicted": p, "answer": a, "correct": p == a} for p, a in pairs]
    # TP 2, FP 1, FN 1: precision = recall = F1 = 2/3; accuracy 3/5; "yes" answered 3/5.
    assert pope_metrics(records) == pytest.approx({"accuracy": 60.0, "precision": 200 / 3, "recall": 200 / 3,
                                                   "f1": 200 / 3, "yes_ratio": 60.0})


@pytest.mark.parametrize("answer, reading", [("Yes", "yes"), ("no.", "no"), ("Yes, it is", "yes"),
                                             ("Maybe", "other")])
def test_mme_reading(answer, reading):
    assert mme_answer(answer) == reading


def test_mme_scores():
    answers = [("existence", "a", True), ("existence", "a", True), ("existence", "b", True),
               ("existence", "b", False), ("code_reasoning", "c", False), ("code_reasoning", "c", True)]
    records = [{"category": category, "image": image, "correct": correct} for category, image, correct in answers]
    scores = mme_scores(records)
    # existence: accuracy 3/4 = 75 plus accuracy+ 1/2 images = 50; code_reasoning: 50 + 0.
    assert scores == {"existence": 125.0, "code_reasoning": 50.0, "perception": 125.0, "cognition": 50.0}


@pytest.mark.parametrize("answer, box", [
    ("[0.10,0.20,0.30,0.40]", [0.1, 0.2, 0.3, 0.4]),
    ("0.1, 0.2, 0.3, 0.4] and more", [0.1, 0.2, 0.3, 0.4]),  # the text before the first "]"
    ("a [0.1,0.2,0.3,0.4] b [0.5,0.5,0.6,0.6]", [0.1, 0.2, 0.3, 0.4]),  # the first bracket
    ("[1,0,1,1]", [1.0, 0.0, 1.0, 1.0]),  # integers count, unlike in the demo's parser
    ("[0.1,0.2,0.3]", [0.0] * 4), ("[0.1,0.2,0.3,0.4,0.5]", [0.0] * 4), ("[a,b,c,d]", [0.0] * 4), ("", [0.0] * 4),
])
def test_rec_box_parsing(answer, box):
    assert parse_rec_box(answer) == box


def test_rec_box_mapping_follows_the_placement():
    # A 200 x 100 image on its 200-px square: centred it sits 50 px down, at the top-left it does not move.
    reference = {"box": [0, 0, 100, 50], "width": 200, "height": 100}
    centred = score_rec("[0.00,0.25,0.50,0.50]", {**reference, "placement": "center"})
    assert centred["correct"] and centred["iou"] == pytest.approx(1.0) and centred["box"] == [0, 0, 100, 50]
    top_left = score_rec("[0.00,0.25,0.50,0.50]", {**reference, "placement": "top_left"})
    assert not top_left["correct"] and top_left["iou"] == 0.0
    half = score_rec("[0.00,0.00,0.25,0.25]", {**reference, "placement": "top_left"})  # [0, 0, 50, 50]: IoU 1/2
    assert half["iou"] == pytest.approx(0.5) and half["correct"]


def test_task_names_and_groups():
    assert [task.name for task in resolve_tasks("demo, mme,demo_ocr_code")] == [
        "demo_som_color", "demo_shape_color", "demo_shape_kind", "demo_count", "demo_grounding", "demo_ocr_code", "mme"]
    assert [task.name for task in resolve_tasks("refcocog")] == ["refcocog_val", "refcocog_test"]
    with pytest.raises(ValueError, match="unknown task 'mmmu'"):
        resolve_tasks("mmmu")
