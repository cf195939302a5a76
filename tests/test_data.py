"""Training data: reference conversation files, `messages` datasets, mixtures, the labels the collator builds (compared
token by token with LLaMA2-Accessory's targets), and bad records skipped and counted instead of stopping a run."""

import io
import json

import PIL.Image
import pytest
import torch
from datasets import Dataset, Image, IterableDataset, List
from torch.utils.data import DataLoader
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from sphinx_x.processors.processing_sphinx_x import STOP_STRING
from sphinx_x.training.collator import SphinxXDataCollator
from sphinx_x.training.data import conversation_record, load_conversations, load_messages, load_mixture, load_source
from sphinx_x.training.recipe import RecipeError


# Narrow encoders on a 128-px canvas (2x2 tiles of 64, 19 positions per view): the SPHINX-X geometry, small.
SMALL_GEOMETRY = {
    "tile_size": 64,
    "convnext_config": {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32], "layer_norm_eps": 1e-5,
                        "image_size": 64},
    "dinov2_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "mlp_ratio": 2,
                      "use_swiglu_ffn": True, "image_size": 56, "patch_size": 14, "layer_norm_eps": 1e-6,
                      "layerscale_value": 1.0},
}
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 30)}
SIZES = [(90, 30), (30, 90), (60, 60)]  # 3:1, 1:3, 1:1: two, two and no skipped tiles


def write_colour_dataset(folder, bad_records: bool = False) -> dict:
    """Solid-colour images of three aspect ratios, a question about the colour in the LLaMA2-Accessory format.

    Returns a mixture source for it. With `bad_records`, adds one record for each skip reason.
    """
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    items = []
    for name, rgb in COLOURS.items():
        for width, height in SIZES:
            file_name = f"{name}_{width}x{height}.png"
            PIL.Image.new("RGB", (width, height), rgb).save(images / file_name)
            items.append({"image": file_name, "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the image?"},
                {"from": "gpt", "value": f"It is {name}."},
            ]})
    if bad_records:
        (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        question, answer = {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."}
        items += [
            {"image": "absent.png", "conversations": [question, answer]},                     # missing_image
            {"image": "corrupt.png", "conversations": [question, answer]},                    # corrupt_image
            {"image": "red_60x60.png", "conversations": [question]},                          # no_assistant_turn
            {"image": "red_60x60.png", "conversations": [{"from": "robot", "value": "?"}, answer]},  # malformed
            {"image": "red_60x60.png", "conversations": [{"from": "human", "value": "hue " * 400}, answer]},  # too_long
        ]
    path = folder / "colours.json"
    path.write_text(json.dumps(items))
    return {"path": str(path), "root": str(images)}


@pytest.fixture(scope="module")
def small_processor():
    from conftest import make_tiny_model_and_processor

    return make_tiny_model_and_processor(**SMALL_GEOMETRY)[1]


def test_accessory_items_are_cleaned_like_the_reference():
    item = {
        "image": "cats/1.jpg",
        "conversations": [
            {"from": "Human", "value": "<image>\n  How many cats?  "},
            {"from": "GPT", "value": 2},
            {"from": "human", "value": "And dogs?<image>"},
            {"from": "assistant", "value": " None. "},
        ],
    }
    assert conversation_record(item, "/data") == {
        "messages": [
            {"role": "user", "content": "How many cats?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "And dogs?"},
            {"role": "assistant", "content": "None."},
        ],
        "images": [{"bytes": None, "path": "/data/cats/1.jpg"}],
    }
    # Absolute paths are kept; a text-only item has no image; an unknown speaker makes the item malformed (empty).
    assert conversation_record({**item, "image": "/abs/x.png"}, "/data")["images"][0]["path"] == "/abs/x.png"
    assert conversation_record({"conversations": item["conversations"]})["images"] == []
    assert conversation_record({"conversations": [{"from": "robot", "value": "hi"}]})["messages"] == []
    assert conversation_record(["not", "a", "dict"])["messages"] == []


def test_conversation_files_json_and_jsonl_eager_and_streaming(tmp_path):
    items = [
        {"image": f"{i}.png", "conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": f"A{i}"}]}
        for i in range(3)
    ]
    (tmp_path / "data.json").write_text(json.dumps(items))
    lines = [json.dumps(items[0]), "{not json", "", json.dumps(items[2])]
    (tmp_path / "data.jsonl").write_text("\n".join(lines))

    eager = load_conversations(str(tmp_path / "data.json"), image_root="imgs")
    assert isinstance(eager, Dataset) and len(eager) == 3
    assert eager[1]["messages"] == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    assert eager[1]["images"] == [{"bytes": None, "path": "imgs/1.png"}]  # a path, not an opened image

    streamed = load_conversations(str(tmp_path / "data.jsonl"), image_root="imgs", streaming=True)
    assert isinstance(streamed, IterableDataset)
    records = list(streamed)
    assert [r["messages"] for r in records] == [eager[0]["messages"], [], eager[2]["messages"]]  # bad line: empty

    # An edited file is read again, not served from the datasets cache.
    (tmp_path / "data.json").write_text(json.dumps(items[:2]))
    assert len(load_conversations(str(tmp_path / "data.json"))) == 2


def test_messages_datasets_keep_images_as_bytes(tmp_path):
    red = PIL.Image.new("RGB", (20, 10), (255, 0, 0))
    rows = Dataset.from_dict(
        {
            "messages": [[
                {"role": "user",
                 "content": [{"type": "image", "text": None}, {"type": "text", "text": "<image>Colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
            ]],
            "images": [[red]],
        }
    ).cast_column("images", List(Image()))
    rows.to_parquet(tmp_path / "rows.parquet")

    for streaming in (False, True):
        record = next(iter(load_messages(str(tmp_path / "rows.parquet"), streaming=streaming)))
        assert record["messages"] == [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "Red."}]
        image = record["images"][0]
        assert isinstance(image["bytes"], bytes) and PIL.Image.open(io.BytesIO(image["bytes"])).size == (20, 10)

    # A single `image` column of paths, relative ones joined with the root.
    single = {"messages": [{"role": "user", "content": "Q"}], "image": "a.png"}
    (tmp_path / "single.jsonl").write_text(json.dumps(single))
    record = load_messages(str(tmp_path / "single.jsonl"), image_root="/root")[0]
    assert record["images"] == [{"bytes": None, "path": "/root/a.png"}]


def test_a_source_keeps_the_records_of_its_tasks(tmp_path):
    """`tasks` selects records of the synthetic data by its `task` column, eagerly and streaming."""
    rows = Dataset.from_dict({
        "messages": [[{"role": "user", "content": [{"type": "text", "text": f"Q{index}"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "A"}]}] for index in range(4)],
        "images": [[], [], [], []],
        "task": ["count", "som_color", "ocr_code", "som_color"],
    })
    rows.to_parquet(tmp_path / "rows.parquet")
    for streaming in (False, True):
        source = {"path": str(tmp_path / "rows.parquet"), "tasks": ["som_color", "count"], "streaming": streaming}
        kept = [record["messages"][0]["content"] for record in load_source(source)]
        assert kept == ["Q0", "Q1", "Q3"]
    (tmp_path / "plain.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Q"}]}))
    with pytest.raises(RecipeError, match="no `task` column"):
        load_source({"path": str(tmp_path / "plain.jsonl"), "format": "messages", "tasks": ["count"]})
    with pytest.raises(RecipeError, match="non-empty list"):
        load_source({"path": str(tmp_path / "rows.parquet"), "tasks": "count"})


def test_mixture_weights_caps_and_streaming(tmp_path):
    def source(name, count):
        items = [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": f"{name}{i}"}]}
                 for i in range(count)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(item) for item in items))
        return str(tmp_path / f"{name}.jsonl")

    a, b = source("a", 400), source("b", 400)

    def answers(dataset):
        return [record["messages"][1]["content"] for record in dataset]

    capped = load_mixture({"sources": [{"path": a, "max_samples": 5}]})
    assert len(capped) == 5 and len(set(answers(capped))) == 5

    mixed = answers(load_mixture({"sources": [{"path": a, "weight": 3}, {"path": b, "weight": 1}], "seed": 1}))
    share_a = sum(answer.startswith("a") for answer in mixed) / len(mixed)
    assert 0.68 < share_a < 0.82  # 3:1

    mixture_file = tmp_path / "mixture.yaml"
    mixture_file.write_text(f"sources:\n  - {{path: {a}, streaming: true, max_samples: 10}}\n  - {{path: {b}}}\n"
                            "stopping_strategy: all_exhausted\n")
    streamed = load_mixture(mixture_file)
    assert isinstance(streamed, IterableDataset)  # one streaming source makes the mixture iterable
    assert sum(answer.startswith("a") for answer in answers(streamed)) >= 10

    with pytest.raises(RecipeError, match="did you mean 'max_samples'"):
        load_mixture({"sources": [{"path": a, "max_sample": 3}]})
    # Refused before any source is read (the paths below do not exist).
    with pytest.raises(RecipeError, match="`weight` must be a positive number, got \\['heavy'\\]"):
        load_mixture({"sources": [{"path": "nowhere.jsonl", "weight": "heavy"}]})
    with pytest.raises(RecipeError, match="`stopping_strategy` must be one of first_exhausted, all_exhausted, all_"):
        load_mixture({"sources": [{"path": "nowhere.jsonl"}], "stopping_strategy": "all"})


def reference_labels(input_ids: list[int], segments: list[list[int]]) -> list[int]:
    """LLaMA2-Accessory's `FinetuneDialogDataset`: each target segment is found by sub-list search after the previous
    match and keeps its ids; every other position is ignored."""
    labels, start = [-100] * len(input_ids), 0
    for segment in segments:
        while input_ids[start : start + len(segment)] != segment:
            start += 1
        labels[start : start + len(segment)] = segment
        start += len(segment)
    return labels


def test_labels_are_the_reference_targets_token_by_token(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]  # real SPHINX-X geometry: up to 1295 image positions
    tokenizer = processor.tokenizer
    conversations = [
        (["What colour?", "And the shape?", "Anything else?"],
         ["It is red.", "A wide bar: 3 by 1.", "No.\nThat's all."]),
        (["Describe."], ["A tall green stripe, nothing else in the picture at all."]),
        (["Hi", "Really?"], ["Hello!", "  Yes, really.  "]),
    ]
    examples = [
        {"messages": [m for q, a in zip(questions, answers) for m in
                      ({"role": "user", "content": q}, {"role": "assistant", "content": a})],
         "images": [PIL.Image.new("RGB", size, (10, 200, 10))]}
        for (questions, answers), size in zip(conversations, [(300, 100), (100, 300), (200, 200)])
    ]
    examples[1]["messages"].insert(0, {"role": "system", "content": "You describe pictures."})

    collators = {
        "sphinx": SphinxXDataCollator(processor=processor, assistant_only_loss=True, max_length=4096),
        "plain TRL": DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True),
    }
    for name, collator in collators.items():
        batch = collator([dict(example) for example in examples])
        assert batch["pixel_values"].shape[0] == 3, name
        for row, (_, answers) in enumerate(conversations):
            ids, labels = batch["input_ids"][row], batch["labels"][row]
            length = int(batch["attention_mask"][row].sum())
            # Each assistant message + "\n###", tokenised as a segment without BOS (spec 8.2); stripped as the
            # template renders it.
            segments = [tokenizer.encode(answer.strip() + STOP_STRING, add_special_tokens=False) for answer in answers]
            assert labels[labels != -100].tolist() == sum(segments, []), name
            assert labels[:length].tolist() == reference_labels(ids[:length].tolist(), segments), name
            assert (labels[length:] == -100).all()  # padding
            assert (labels[ids == processor.image_token_id] == -100).all()  # image positions (and skip tokens)
            assert ids[length - 1] == tokenizer.eos_token_id and labels[length - 1] == -100  # EOS never trained


def test_sequence_length_is_exact_and_too_long_records_are_skipped(small_processor):
    collator = SphinxXDataCollator(processor=small_processor, assistant_only_loss=True)
    for size in [(90, 30), (30, 90), (60, 60), (200, 20)]:
        example = {"messages": [{"role": "user", "content": "What colour is it?"},
                                {"role": "assistant", "content": "Blue, all of it."}],
                   "images": [PIL.Image.new("RGB", size, (0, 0, 255))]}
        length = int(collator([dict(example)])["attention_mask"].sum())
        checked = collator.checked(dict(example))
        text = small_processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
             {"role": "assistant", "content": "Blue, all of it."}], tokenize=False)
        assert collator.sequence_length(text, checked["images"]) == length, size

        exact = SphinxXDataCollator(processor=small_processor, assistant_only_loss=True, max_length=length)
        assert int(exact([dict(example)])["attention_mask"].sum()) == length
        short = SphinxXDataCollator(processor=small_processor, assistant_only_loss=True, max_length=length - 1)
        short([dict(example)])
        assert short.skipped.totals()["too_long"] == 1


def test_bad_records_are_skipped_and_counted(tmp_path, small_processor):
    source = write_colour_dataset(tmp_path, bad_records=True)
    dataset = load_mixture({"sources": [source]})
    good = len(COLOURS) * len(SIZES)
    assert len(dataset) == good + 5
    collator = SphinxXDataCollator(processor=small_processor, assistant_only_loss=True, max_length=300)

    # A batch mixing good and bad records keeps the good ones.
    batch = collator([dataset[0], dataset[good], dataset[good + 1], dataset[1]])
    assert batch["input_ids"].shape[0] == 2 and (batch["labels"] != -100).any()
    # A batch of bad records becomes one placeholder whose labels are all ignored: the loss is unchanged and every
    # module still runs on every rank.
    batch = collator([dataset[index] for index in range(good + 2, good + 5)])
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"].shape[0] == 1
    assert (batch["labels"] == -100).all()
    assert collator.skipped.totals() == {"malformed": 1, "no_assistant_turn": 1, "missing_image": 1,
                                         "corrupt_image": 1, "too_long": 1, "failed": 0}
    # The placeholder itself is never cut, whatever `max_length`.
    tight = SphinxXDataCollator(processor=small_processor, assistant_only_loss=True, max_length=40)
    batch = tight([dataset[0]])
    assert batch["input_ids"].shape[1] > 40 and (batch["labels"] == -100).all()

    # DataLoader workers (other processes) count into the same totals.
    in_workers = SphinxXDataCollator(processor=small_processor, assistant_only_loss=True, max_length=300)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=in_workers)
    rows = sum(batch["input_ids"].shape[0] for batch in loader)
    assert rows == good + 2  # the 12 good records, then two batches of bad ones, one placeholder each
    assert in_workers.skipped.totals() == {**dict.fromkeys(in_workers.skipped.totals(), 1), "failed": 0}


def test_text_only_records_train_their_answers(small_processor):
    collator = SphinxXDataCollator(processor=small_processor, assistant_only_loss=True)
    text_only = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}],
                 "images": []}
    batch = collator([text_only])
    assert "pixel_values" not in batch or batch["pixel_values"].shape[0] == 0
    assert batch["labels"][batch["labels"] != -100].tolist() == small_processor.tokenizer.encode(
        "Hi." + STOP_STRING, add_special_tokens=False)
    assert torch.equal(batch["input_ids"][0, :1], torch.tensor([small_processor.tokenizer.bos_token_id]))

