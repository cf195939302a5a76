"""Short-answer VQA: VQAv2 / TextVQA (VQA accuracy), GQA (exact match), DocVQA / InfographicVQA (ANLS), ChartQA
(relaxed accuracy). Prompt: the reference's `{}\\nAnswer the question using a single word or phrase.` (spec 10)."""

import re

from .data import read_rows
from .task import SHORT_ANSWER, Sample, Task, percent, rgb


# The official VQA evaluation's answer normalisation (VQA API `vqaEval.py`, used by EvalAI and lmms-eval).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(answer: str) -> str:
    """The VQA evaluation's normalisation: punctuation removed (or made a space), periods not inside numbers dropped,
    lower case, number words as digits, articles dropped, contractions restored (`"Two dogs."` -> `"2 dogs"`,
    `"dont"` -> `"don't"`)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    for mark in PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or COMMA_STRIP.search(text):
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = PERIOD_STRIP.sub("", text)
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def vqa_accuracy(answer: str, references: list[str]) -> float:
    """VQA accuracy in [0, 1]: `min(1, matches / 3)` against each leave-one-out subset of the (normally 10) human
    answers, averaged; answers are compared after `normalize_vqa_answer`."""
    answer = normalize_vqa_answer(answer)
    matches = [normalize_vqa_answer(reference) == answer for reference in references]
    total = sum(matches)
    return sum(min(1.0, (total - match) / 3) for match in matches) / len(matches)


def levenshtein(first: str, second: str) -> int:
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, 1):
        current = [i]
        for j, b in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def anls(answer: str, references: list[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one answer (DocVQA): the best over the references of
    `1 - distance / max(len)` on lower-cased, stripped strings, or 0 when that normalised distance is `>= threshold`.
    Two empty strings are identical (1.0)."""
    answer = " ".join(answer.strip().lower().split())
    best = 0.0
    for reference in references:
        reference = " ".join(reference.strip().lower().split())
        length = max(len(answer), len(reference))
        distance = levenshtein(answer, reference) / length if length else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(answer: str, reference: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA's relaxed accuracy (pix2struct's definition): numbers (`"12%"` is 0.12) within 5 % of a non-zero
    reference are right; anything else must match exactly, ignoring case."""
    answer, reference = answer.strip(), reference.strip()
    predicted, expected = to_float(answer), to_float(reference)
    if predicted is not None and expected:
        return abs(predicted - expected) / abs(expected) <= max_relative_change
    return answer.lower() == reference.lower()


def answer_texts(answers) -> list[str]:
    """Reference answers as strings: VQAv2 stores `{"answer": ...}` records, the others plain strings."""
    answers = answers if isinstance(answers, list) else [answers]
    return [answer["answer"] if isinstance(answer, dict) else str(answer) for answer in answers]


def short_answer_sample(question_id: str | None):
    """Rows with `question`, `image` and `answers` (or one `answer`), keyed by `question_id` (`None`: position)."""

    def to_sample(row: dict) -> Sample:
        references = answer_texts(row["answers"] if "answers" in row else row["answer"])
        extra = {"type": row["type"]} if "type" in row else {}  # ChartQA: human / augmented
        return Sample(image=rgb(row["image"]), question=SHORT_ANSWER.format(row["question"]),
                      reference={"answers": references, **extra},
                      id=str(row[question_id]) if question_id else None)

    return to_sample


def scorer(function, name: str):
    def score(answer: str, reference: dict) -> dict:
        extra = {key: value for key, value in reference.items() if key != "answers"}
        return {name: float(function(answer.strip(), reference["answers"])), **extra}

    return score


def mean_of(name: str, by: str | None = None):
    """Aggregates the per-sample `name` as a percentage (and per value of `by`, ChartQA's human / augmented)."""

    def aggregate(records: list[dict]) -> dict:
        result = {name: percent(record[name] for record in records)}
        for group in sorted({record[by] for record in records}) if by else ():
            result[f"{name}_{group}"] = percent(record[name] for record in records if record[by] == group)
        return result

    return aggregate


GQA = ("lmms-lab-encoder/GQA", "testdev_balanced_instructions", "testdev")


def gqa_rows(data_files):
    """GQA's questions name their image by `imageId`; the Hub keeps the images in another config. Local files carry
    the image in an `image` column instead."""
    rows = read_rows(GQA, data_files)
    if data_files is not None:
        return rows
    images = read_rows(("lmms-lab-encoder/GQA", "testdev_balanced_images", "testdev"))
    by_id = dict(zip(images["id"], range(len(images))))
    return rows.map(lambda image_id: {"image": images[by_id[image_id]]["image"]}, input_columns="imageId")


def exact_match(answer: str, references: list[str]) -> bool:
    return normalize_vqa_answer(answer) in {normalize_vqa_answer(reference) for reference in references}


TASKS = [
    Task("vqav2_val", "vqa_accuracy", ("lmms-lab-encoder/VQAv2", None, "validation"), 10,
         short_answer_sample("question_id"), scorer(vqa_accuracy, "vqa_accuracy"), mean_of("vqa_accuracy")),
    Task("textvqa_val", "vqa_accuracy", ("lmms-lab-encoder/textvqa", None, "validation"), 10,
         short_answer_sample("question_id"), scorer(vqa_accuracy, "vqa_accuracy"), mean_of("vqa_accuracy")),
    Task("gqa", "accuracy", GQA, 10, short_answer_sample("id"), scorer(exact_match, "accuracy"), mean_of("accuracy"),
         load=gqa_rows),
    Task("docvqa_val", "anls", ("lmms-lab-encoder/DocVQA", "DocVQA", "validation"), 32,
         short_answer_sample("questionId"), scorer(anls, "anls"), mean_of("anls")),
    Task("infovqa_val", "anls", ("lmms-lab-encoder/DocVQA", "InfographicVQA", "validation"), 25,
         short_answer_sample("questionId"), scorer(anls, "anls"), mean_of("anls")),
    Task("chartqa", "relaxed_accuracy", ("lmms-lab-encoder/ChartQA", None, "test"), 10,
         short_answer_sample(None), scorer(lambda answer, references: relaxed_correctness(answer, references[0]),
                                           "relaxed_accuracy"), mean_of("relaxed_accuracy", by="type")),
]
