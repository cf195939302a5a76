"""The SPHINX-X training collator: TRL's vision collator behind a per-record check that skips and counts bad records.

Why in the collator and not in a `datasets.filter` pass: TRL processes vision data on the fly, and so does this check,
at the moment each image is decoded anyway. It costs no extra pass over millions of images before training starts,
it behaves the same for map-style and streaming datasets, in DataLoader workers and under `accelerate launch`, and it
catches what only decoding reveals (a truncated file). A batch never shrinks to nothing: if every record of a batch
is bad, one placeholder record with no trained token takes its place, so every rank still runs every module (which
DDP, FSDP and ZeRO-3 rely on) and the loss is unchanged.
"""

import dataclasses
import multiprocessing
import os
import re

import PIL.Image
import torch
from transformers.utils import logging
from trl.data_utils import prepare_multimodal_messages
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from .data import as_list, message_text


logger = logging.get_logger(__name__)

SKIP_REASONS = ("malformed", "no_assistant_turn", "missing_image", "corrupt_image", "too_long", "failed")
CHAT_ROLES = {"system", "user", "assistant"}
LOGGED_PER_REASON = 5  # records named in the log, per reason and process; all are counted


class SkippedRecord(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class SkippedRecords:
    """Counts of skipped records by reason, shared by the DataLoader worker processes that collate (one rank).

    Args:
        multiprocessing_context: the DataLoader's (`None`: the platform default, as for the DataLoader).
    """

    def __init__(self, multiprocessing_context: str | None = None):
        self.counts = torch.zeros(len(SKIP_REASONS), dtype=torch.int64).share_memory_()
        self.lock = multiprocessing.get_context(multiprocessing_context).Lock()
        self.logged = dict.fromkeys(SKIP_REASONS, 0)

    def add(self, skip: SkippedRecord) -> None:
        with self.lock:
            self.counts[SKIP_REASONS.index(skip.reason)] += 1
        if self.logged[skip.reason] < LOGGED_PER_REASON:
            self.logged[skip.reason] += 1
            logger.warning(f"Skipping a training record ({skip}).")

    def totals(self) -> dict[str, int]:
        return dict(zip(SKIP_REASONS, self.counts.tolist()))


@dataclasses.dataclass
class SphinxXDataCollator(DataCollatorForVisionLanguageModeling):
    """`DataCollatorForVisionLanguageModeling` for `messages` + `images` records that drops the records it cannot
    train on, each counted by reason in `skipped`:

    - `malformed`: no conversation, a role other than system / user / assistant, an `<image>` literal in the text;
    - `no_assistant_turn`: nothing to learn;
    - `missing_image`: no file at the image path; `corrupt_image`: the image does not decode;
    - `too_long`: longer than `max_length` once every image is expanded to its placeholder tokens;
    - `failed`: anything else the record raised while it was checked (out of memory, a network error, ...).

    Records too long are skipped, not truncated: a cut would drop image placeholders or half an answer. Images are
    decoded once, here, and handed to the processor as PIL images.

    `spelled_answers` (a regular expression): assistant answers that match it whole are trained one character per
    token instead of in the tokenizer's merges, so that "EW65" is `E`, `W`, `6`, `5` and not `EW`, `6`, `5`. A model
    that reads characters as single-character tokens (the demo's character gate) then answers with a copy of them;
    decoding gives the same text. Every character of such an answer must be a token of its own (`malformed` if not).
    """

    skipped: SkippedRecords = dataclasses.field(default_factory=SkippedRecords)
    spelled_answers: re.Pattern | None = None

    def torch_call(self, examples: list[dict]) -> dict:
        records = []
        for example in examples:
            try:
                records.append(self.checked(example))
            except SkippedRecord as skip:
                self.skipped.add(skip)
            except Exception as error:  # noqa: BLE001 (one record must not end the run, whatever it raises)
                self.skipped.add(SkippedRecord("failed", f"{type(error).__name__}: {error}"))
        if records:
            batch = super().torch_call(records)
            return self.spelled(batch, records) if self.spelled_answers is not None else batch
        # Every record was bad. The placeholder is never truncated: a cut through its image would not collate.
        untruncated = dataclasses.replace(self, max_length=None)
        batch = super(SphinxXDataCollator, untruncated).torch_call([self.placeholder()])
        batch["labels"].fill_(-100)
        return batch

    def checked(self, example: dict) -> dict:
        """The record ready for TRL's collator (images opened), or `SkippedRecord`."""
        messages = example.get("messages") or []
        if not messages or any(not isinstance(m, dict) or m.get("role") not in CHAT_ROLES for m in messages):
            raise SkippedRecord("malformed", "not a conversation of system, user and assistant turns")
        if not any(message["role"] == "assistant" for message in messages):
            raise SkippedRecord("no_assistant_turn", "the conversation has no answer to learn")
        spelled = [answer for answer in self.answers_to_spell(messages) if answer is not None]
        for answer in spelled:
            self.character_ids(answer)
        entries = example.get("images") if example.get("images") is not None else example.get("image")
        images = [self.open_image(entry) for entry in as_list(entries)]
        try:
            conversation = prepare_multimodal_messages(messages, images)
        except ValueError as error:  # e.g. images without a user turn to hold them
            raise SkippedRecord("malformed", str(error)) from None
        text = self.processor.apply_chat_template(conversation, chat_template=self.chat_template, tokenize=False)
        if text.count(self.processor.image_token) != len(images):
            raise SkippedRecord("malformed", f"the text holds a literal {self.processor.image_token!r}")
        if self.max_length is not None:
            tokenizer = self.processor.tokenizer
            length = self.sequence_length(text, images) + sum(  # spelled answers take a token per character
                len(answer) - len(tokenizer.encode(answer, add_special_tokens=False)) for answer in spelled)
            if length > self.max_length:
                raise SkippedRecord("too_long", f"{length} tokens with the image positions > {self.max_length}")
        return {"messages": messages, "images": images}

    def open_image(self, entry) -> PIL.Image.Image:
        """A path, bytes, PIL image or `datasets.Image(decode=False)` storage -> a decoded, upright PIL image."""
        source = (entry.get("bytes") or entry.get("path")) if isinstance(entry, dict) else entry
        if source is None:
            raise SkippedRecord("malformed", "an image entry with neither bytes nor a path")
        if isinstance(source, (str, os.PathLike)) and "://" not in str(source) and not os.path.isfile(source):
            raise SkippedRecord("missing_image", f"no file at {os.fspath(source)!r}")
        try:
            return self.processor.image_processor.fetch_images(source)
        except (ValueError, OSError, MemoryError) as error:  # URL failures are ValueErrors naming the URL
            raise SkippedRecord("corrupt_image", str(error)) from None

    def sequence_length(self, text: str, images: list[PIL.Image.Image]) -> int:
        """Tokens of the rendered conversation once each `<image>` becomes its run of placeholders."""
        image_processor = self.processor.image_processor
        placeholders = sum(
            image_processor.num_image_tokens(image_processor.tile_mask(image.width, image.height)) for image in images
        )
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) - len(images) + placeholders

    def answers_to_spell(self, messages: list[dict]) -> list[str | None]:
        """Per assistant turn, in order: its text if `spelled_answers` matches it whole, else `None`."""
        texts = [message_text(message["content"]) for message in messages if message["role"] == "assistant"]
        if self.spelled_answers is None:
            return [None] * len(texts)
        return [text if self.spelled_answers.fullmatch(text) else None for text in texts]

    def character_ids(self, text: str) -> list[int]:
        """One token id per character of `text`, or `SkippedRecord` naming a character without a token."""
        tokenizer = self.processor.tokenizer
        ids = [tokenizer.convert_tokens_to_ids(character) for character in text]
        missing = [character for character, id_ in zip(text, ids) if id_ is None or id_ == tokenizer.unk_token_id]
        if missing:
            raise SkippedRecord("malformed", f"an answer to spell has characters without a token: {missing}")
        return ids

    def spelled(self, batch: dict, records: list[dict]) -> dict:
        """`batch` with each answer of `answers_to_spell` re-tokenized one character per token, re-padded.

        Answers are the runs of trained labels, one per assistant turn in order; a run that does not start with the
        answer's own tokens (a turn cut by `max_length`) is left as it is.
        """
        tokenizer = self.processor.tokenizer
        rows = []
        for input_ids, labels, mask, record in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                                   batch["attention_mask"].tolist(), records):
            length = sum(mask)  # padding is on the right
            input_ids, labels = input_ids[:length], labels[:length]
            starts = [i for i in range(length) if labels[i] != -100 and (i == 0 or labels[i - 1] == -100)]
            for start, answer in reversed(list(zip(starts, self.answers_to_spell(record["messages"])))):
                merged = tokenizer.encode(answer, add_special_tokens=False) if answer is not None else []
                if not merged or input_ids[start:start + len(merged)] != merged:
                    continue
                spelled = self.character_ids(answer)
                input_ids[start:start + len(merged)] = spelled
                labels[start:start + len(merged)] = spelled
            rows.append((input_ids, labels))
        width = max(len(input_ids) for input_ids, _ in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad = tokenizer.pad_token_id
        batch["input_ids"] = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        batch["labels"] = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])
        batch["attention_mask"] = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        return batch

    def placeholder(self) -> dict:
        """A record standing in for a batch of bad ones; its labels are all ignored."""
        return {
            "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
            "images": [PIL.Image.new("RGB", (32, 32))],
        }


__all__ = ["SKIP_REASONS", "SkippedRecords", "SphinxXDataCollator"]
