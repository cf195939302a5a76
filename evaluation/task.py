"""What every benchmark of `sphinx-x eval` is made of: a `Task` (where its data lives, how a row becomes a prompt,
how one answer is scored and how the scores aggregate) and the `Sample` it feeds to the model."""

from dataclasses import dataclass, field
from typing import Any, Callable

import PIL.Image


# The reference's pattern for short answers (LLaMA2-Accessory `eval_mm/annotations/annotation_config.json`, spec 10).
SHORT_ANSWER = "{}\nAnswer the question using a single word or phrase."


@dataclass
class Sample:
    """One question for the model.

    Args:
        image (`PIL.Image.Image` or `None`): the image of the question.
        question (`str`): the Human message, already in the task's prompt pattern.
        reference (`Any`): what `Task.score` compares the answer with (JSON-serialisable).
        suffix (`str`): text appended after `### Assistant:` (ScienceQA's `" The answer is"`); the answer follows it.
        id (`str` or `None`): unique within the task, the key of the resumable predictions file; `None` uses the
            row's position in the dataset.
    """

    image: PIL.Image.Image | None
    question: str
    reference: Any
    suffix: str = ""
    id: str | None = None


@dataclass(frozen=True)
class Task:
    """One benchmark.

    Args:
        name (`str`): what `--task` names.
        metric (`str`): the headline metric (a key of `aggregate`'s result), shown in the results table.
        dataset (`tuple`): `(path, config or None, split)` of the public Hub dataset, for `datasets.load_dataset`.
        max_new_tokens (`int`): generation budget, the reference's for the benchmark.
        to_sample (`Callable[[dict], Sample]`): a dataset row -> the question.
        score (`Callable[[str, Any], dict]`): the answer and `Sample.reference` -> a JSON record for this sample
            (what the metric needs, e.g. `{"correct": True}`).
        aggregate (`Callable[[list[dict]], dict]`): the records of all samples -> metrics in percent.
        paper (`dict[str, float]`): published numbers of SPHINX models on this benchmark, by model name (only those
            the reference documents; spec 11.3).
        load (`Callable` or `None`): loads the rows itself, from `data_files` (`None`: the default source) when the
            rows need more than `datasets.load_dataset` (a filter, images in another config, generated data).
    """

    name: str
    metric: str
    dataset: tuple[str, str | None, str] | None
    max_new_tokens: int
    to_sample: Callable[[dict], Sample]
    score: Callable[[str, Any], dict]
    aggregate: Callable[[list[dict]], dict]
    paper: dict[str, float] = field(default_factory=dict)
    load: Callable | None = None


def rgb(image) -> PIL.Image.Image | None:
    """A dataset's image cell (PIL image, or `None` for a text-only question) in RGB."""
    return None if image is None else image.convert("RGB")


def percent(values) -> float:
    """Mean of booleans or numbers in [0, 1], in percent; 0 for no values."""
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0
