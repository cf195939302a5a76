"""Training data: LLaMA2-Accessory / LLaVA conversation files, `messages` + `images` datasets, weighted mixtures.

Every source becomes the two columns TRL's vision collator reads:

    messages: [{"role": "system" | "user" | "assistant", "content": str}]
    images:   [{"bytes": bytes | None, "path": str | None}]     (`datasets.Image(decode=False)`)

Images stay unopened until the collator (`collator.py`), which also validates each record: a record that cannot be
trained is skipped and counted there, never while loading, so one bad line does not stop a large file.

A mixture (inline in a recipe or a YAML file):

```yaml
sources:
  - path: data/llava_v1_5_mix665k.json     # Accessory / LLaVA conversations (.json list or .jsonl)
    root: data/images                      # joined with each record's relative image path
    weight: 3                              # sampling weight (normalised over the sources)
    max_samples: 200000                    # cap: a seeded random subset (the first ones when streaming)
  - path: HuggingFaceH4/llava-instruct-mix-vsft    # a dataset with `messages` + `images` (Hub id, folder, file)
    format: messages                       # the default, except for local .json/.jsonl files (conversations)
    split: train                           # and `subset`: the dataset's configuration name, if it has several
    streaming: true                        # read lazily: for sources too large to copy into the cache
  - path: data/demo/train.parquet          # the synthetic data (`training/synthetic`) ...
    tasks: [som_color, som_shape]          # ... only the records of these tasks (its `task` column)
seed: 0
stopping_strategy: first_exhausted         # or all_exhausted: see `datasets.interleave_datasets`
```
"""

import json
import os
from pathlib import Path

from datasets import Dataset, Features, Image, IterableDataset, List, Value, interleave_datasets, load_dataset
from datasets.fingerprint import Hasher

from .recipe import RecipeError, check_keys, load_yaml


IMAGE_TOKEN = "<image>"
FEATURES = Features(
    {
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "images": List(Image(decode=False)),
    }
)
# LLaMA2-Accessory matches `from` case-insensitively; any other speaker is an error there, a skipped record here.
ACCESSORY_ROLES = {"human": "user", "gpt": "assistant", "assistant": "assistant"}
MIXTURE_KEYS = {"sources", "seed", "stopping_strategy"}
STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")  # `interleave_datasets`
SOURCE_KEYS = {"path", "format", "root", "weight", "max_samples", "streaming", "split", "subset", "tasks"}
FORMATS = ("conversations", "messages")
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def clean_text(value) -> str:
    """As the reference: non-strings made strings, the literal `<image>` removed (the chat template places the
    image), surrounding whitespace stripped."""
    return str(value).replace(IMAGE_TOKEN, "").strip()


def as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def image_entry(image, root: str | None) -> dict:
    """A path (relative ones joined with `root`) or `Image(decode=False)` storage -> `{"bytes", "path"}`."""
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
    else:
        data, path = None, str(image)
    if data is None and path and root and not os.path.isabs(path) and "://" not in path:
        path = os.path.join(root, path)
    return {"bytes": data, "path": path}


def malformed() -> dict:
    """An empty conversation: the collator skips it as malformed."""
    return {"messages": [], "images": []}


def conversation_record(item, image_root: str | None = None) -> dict:
    """One LLaMA2-Accessory / LLaVA item `{"image": path, "conversations": [{"from", "value"}, ...]}` -> columns."""
    turns = item.get("conversations") if isinstance(item, dict) else None
    if not isinstance(turns, list):
        return malformed()
    messages = []
    for turn in turns:
        role = ACCESSORY_ROLES.get(str(turn.get("from")).lower()) if isinstance(turn, dict) else None
        if role is None or "value" not in turn:
            return malformed()
        messages.append({"role": role, "content": clean_text(turn["value"])})
    return {"messages": messages, "images": [image_entry(image, image_root) for image in as_list(item.get("image"))]}


def message_text(content) -> str:
    """String content as it is; content blocks -> their text parts joined (SPHINX puts images after BOS anyway)."""
    if isinstance(content, list):
        content = " ".join(block["text"] for block in content if block.get("type") == "text" and block.get("text"))
    return clean_text(content or "")


def messages_record(example: dict, image_root: str | None = None) -> dict:
    """A `messages` record with `images` (a list) or `image` (one) -> columns."""
    images = example.get("images") if example.get("images") is not None else example.get("image")
    messages = [
        {"role": str(message.get("role")), "content": message_text(message.get("content"))}
        for message in example.get("messages") or []
    ]
    return {"messages": messages, "images": [image_entry(image, image_root) for image in as_list(images)]}


def read_items(path: str):
    """Items of a JSON list file or of a JSONL file; a JSONL line that is not JSON gives `None` (skipped later)."""
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            for line in handle:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        yield None
        else:
            items = json.load(handle)
            if not isinstance(items, list):
                raise RecipeError(f"{path} must hold a JSON list of conversations (or be a .jsonl file).")
            yield from items


def conversation_records(paths: list[str], image_root: str | None):
    for path in paths:
        for item in read_items(path):
            yield conversation_record(item, image_root)


def load_conversations(path: str, image_root: str | None = None, streaming: bool = False) -> Dataset | IterableDataset:
    """A LLaMA2-Accessory / LLaVA conversation file as a dataset of `messages` + `images` (paths, not opened)."""
    if not os.path.isfile(path):
        raise RecipeError(f"No conversation file at {path!r}.")
    gen_kwargs = {"paths": [path], "image_root": image_root}
    if streaming:
        return IterableDataset.from_generator(conversation_records, features=FEATURES, gen_kwargs=gen_kwargs)
    # The cache is keyed by the file's identity and the conversion code, so an edited file is read again.
    stat = os.stat(path)
    fingerprint = Hasher.hash((conversation_records, os.path.abspath(path), stat.st_size, stat.st_mtime_ns, image_root))
    return Dataset.from_generator(
        conversation_records, features=FEATURES, gen_kwargs=gen_kwargs, fingerprint=fingerprint
    )


def load_messages(
    path: str, image_root: str | None = None, streaming: bool = False, split: str = "train", subset: str | None = None,
    tasks: list[str] | None = None,
) -> Dataset | IterableDataset:
    """A dataset with `messages` and `images` (or `image`): a local .json/.jsonl/.parquet file, a folder or a Hub id;
    with `tasks`, only the records whose `task` column is one of them."""
    builder = FILE_BUILDERS.get(Path(path).suffix) if os.path.isfile(path) else None
    if builder:
        dataset = load_dataset(builder, data_files=path, split="train", streaming=streaming)
    else:
        dataset = load_dataset(path, subset, split=split, streaming=streaming)
    if tasks is not None:
        if "task" not in (dataset.column_names or []):
            raise RecipeError(f"The source {path} has no `task` column to select `tasks` {tasks} by; drop `tasks` "
                              "or use data made by `training.synthetic` (e.g. `training.demo.make_data`).")
        dataset = dataset.filter(lambda task: task in tasks, input_columns="task")
    # Keep images as bytes / paths: decoding belongs to the collator, where a corrupt image is skipped.
    for column in ("images", "image"):
        feature = (dataset.features or {}).get(column)
        if isinstance(feature, Image):
            dataset = dataset.cast_column(column, Image(decode=False))
        elif isinstance(feature, List) and isinstance(feature.feature, Image):
            dataset = dataset.cast_column(column, List(Image(decode=False)))
    # Columns are unknown up front when streaming JSON, so select after mapping rather than remove while mapping.
    dataset = dataset.map(messages_record, fn_kwargs={"image_root": image_root})
    return dataset.select_columns(list(FEATURES)).cast(FEATURES)


def load_source(source: dict, seed: int = 0) -> Dataset | IterableDataset:
    """One mixture source (see the module docstring), capped at `max_samples`."""
    check_keys("data source", source, SOURCE_KEYS)
    if "path" not in source:
        raise RecipeError("Every data source needs a `path` (a file, a folder or a Hub dataset id).")
    path, root, streaming = str(source["path"]), source.get("root"), bool(source.get("streaming", False))
    is_conversation_file = os.path.isfile(path) and Path(path).suffix in (".json", ".jsonl")
    data_format = source.get("format") or ("conversations" if is_conversation_file else "messages")
    if data_format not in FORMATS:
        raise RecipeError(f"A source's `format` must be one of {', '.join(FORMATS)}, got {data_format!r}.")
    tasks = source.get("tasks")
    if tasks is not None and (data_format != "messages" or not isinstance(tasks, list) or not tasks):
        raise RecipeError(f"A source's `tasks` is a non-empty list of task names of a `messages` dataset, got "
                          f"{tasks!r} for {path}.")
    if data_format == "conversations":
        dataset = load_conversations(path, root, streaming)
    else:
        dataset = load_messages(path, root, streaming, source.get("split", "train"), source.get("subset"),
                                tasks)

    cap = source.get("max_samples")
    if cap is not None:
        if isinstance(dataset, IterableDataset):
            dataset = dataset.take(cap)
        else:  # a seeded random subset, like the reference's `ratio`
            dataset = dataset.shuffle(seed=seed).select(range(min(cap, len(dataset))))
    return dataset


def load_mixture(spec: dict | str | Path) -> Dataset | IterableDataset:
    """The training dataset of a mixture: its sources interleaved with probabilities proportional to their weights.

    If any source streams, all are read as iterable datasets (the trainer then needs `max_steps`).
    """
    if isinstance(spec, (str, Path)):
        spec = load_yaml(spec)
    check_keys("data mixture", spec, MIXTURE_KEYS)
    sources = spec.get("sources")
    if not sources or not isinstance(sources, list):
        raise RecipeError("A data mixture needs a non-empty list `sources`.")
    seed = spec.get("seed", 0)
    # Checked before any source is read: loading one can mean a download or a long JSON conversion. A source that is
    # not a mapping gets its own error from `load_source`.
    weights = [source.get("weight", 1.0) if isinstance(source, dict) else 1.0 for source in sources]
    if not all(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0 for weight in weights):
        raise RecipeError(f"Every source's `weight` must be a positive number, got {weights}.")
    stopping_strategy = spec.get("stopping_strategy", "first_exhausted")
    if stopping_strategy not in STOPPING_STRATEGIES:
        raise RecipeError(
            f"`stopping_strategy` must be one of {', '.join(STOPPING_STRATEGIES)}, got {stopping_strategy!r}."
        )
    datasets = [load_source(source, seed) for source in sources]
    if len(datasets) == 1:
        return datasets[0]
    if any(isinstance(dataset, IterableDataset) for dataset in datasets):
        datasets = [d if isinstance(d, IterableDataset) else d.to_iterable_dataset() for d in datasets]
    return interleave_datasets(
        datasets,
        probabilities=[weight / sum(weights) for weight in weights],
        seed=seed,
        stopping_strategy=stopping_strategy,
    )


__all__ = [
    "FEATURES",
    "conversation_record",
    "load_conversations",
    "load_messages",
    "load_mixture",
    "load_source",
    "messages_record",
]
