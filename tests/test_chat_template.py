"""The chat template reproduces LLaMA2-Accessory's conversation format (conv_v1_2) and marks the trained spans."""

import pytest
from PIL import Image
from transformers import ProcessorMixin

from sphinx_x.processors.processing_sphinx_x import DEFAULT_SYSTEM_PROMPT


def test_multi_turn_rendering_is_the_reference_format(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  Q1 "}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1 is here."}]},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "Q3"},
    ]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == (
        f"<s><image>{DEFAULT_SYSTEM_PROMPT}\n\n### Human: Q1\n### Assistant: A1 is here.\n### Human: Q2\n"
        "### Assistant: A2\n### Human: Q3\n### Assistant:"
    )
    # A finished conversation (training) ends with the terminator and EOS, as the reference tokenises it.
    assert processor.apply_chat_template(messages[:4]).endswith("### Assistant: A2\n###</s>")


def test_system_prompt_and_image_placement(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    messages = [
        {"role": "system", "content": "You read receipts."},
        {"role": "user", "content": [{"type": "text", "text": "Total?"}, {"type": "image"}]},
    ]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    # The image block always follows BOS, wherever the image sits in the message, as SPHINX was trained.
    assert rendered == "<s><image>You read receipts.\n\n### Human: Total?\n### Assistant:"


def test_unknown_role_is_refused(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    with pytest.raises(Exception, match="system, user and assistant"):
        processor.apply_chat_template([{"role": "tool", "content": "x"}])


def test_assistant_mask_covers_answers_and_terminators_like_the_reference(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    tokenizer = processor.tokenizer
    answers = ["A1 is here.", "The total is 12.50 dollars."]
    messages = [
        {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (300, 100))},
                                     {"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": answers[1]},
    ]
    inputs = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = inputs["input_ids"][0], inputs["assistant_masks"][0].bool()
    # Reference labels: each assistant message + "\n###", tokenised as a segment without BOS (spec 8.2).
    reference = sum((tokenizer.encode(answer + "\n###", add_special_tokens=False) for answer in answers), [])
    assert ids[mask].tolist() == reference
    assert ids[-1] == tokenizer.eos_token_id and not mask[-1]  # EOS is never trained
    assert not mask[ids == processor.image_token_id].any()


def test_assistant_mask_matches_the_transformers_computation_on_a_padded_batch(tiny_model_and_processor, monkeypatch):
    # The processor computes the mask with tensor comparisons; `ProcessorMixin`'s loop is the specification.
    processor = tiny_model_and_processor[1]
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", size)},
                                      {"type": "text", "text": f"Question {index}"}]},
         {"role": "assistant", "content": f"Answer {index} " * (index + 1)},
         {"role": "user", "content": "And then?"},
         {"role": "assistant", "content": "[0.10,0.20,0.30,0.40]"}]
        for index, size in enumerate([(300, 100), (64, 64), (90, 400)])
    ]
    arguments = {"tokenize": True, "return_dict": True, "return_assistant_tokens_mask": True, "return_tensors": "pt",
                 "processor_kwargs": {"padding": True}}
    fast = processor.apply_chat_template(conversations, **arguments)
    monkeypatch.setattr(type(processor), "_adjust_assistant_masks_indices",
                        ProcessorMixin._adjust_assistant_masks_indices)
    slow = processor.apply_chat_template(conversations, **arguments)
    assert fast["input_ids"].tolist() == slow["input_ids"].tolist()
    assert fast["assistant_masks"].tolist() == slow["assistant_masks"].tolist()
    assert fast["assistant_masks"].sum() > 0
