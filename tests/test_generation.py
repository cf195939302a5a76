"""Generation as users run it: batching with left padding, the stop string, streaming, the pipeline, bf16."""

import copy
import threading

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    TextIteratorStreamer,
    pipeline,
)

from sphinx_x.processors import SphinxXProcessor
from sphinx_x.processors.processing_sphinx_x import STOP_STRING

from conftest import chat_inputs, make_tiny_model_and_processor


def conversation(text, image=None):
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def test_batched_generation_equals_single(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    conversations = [
        conversation("What colour is it?", Image.new("RGB", (600, 200), (200, 10, 10))),
        conversation("Describe the picture please.", Image.new("RGB", (200, 400), (10, 200, 10))),
        conversation("Hello there"),
    ]
    batch = chat_inputs(processor, conversations, padding=True)
    assert batch["pixel_values"].shape[0] == 2
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends at the last column
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3  # three different prompt lengths
    with torch.no_grad():
        batched = model.generate(**batch, max_new_tokens=6)[:, batch["input_ids"].shape[1] :]
        for row, conv in enumerate(conversations):
            single = chat_inputs(processor, [conv], padding=True)
            alone = model.generate(**single, max_new_tokens=6)[0, single["input_ids"].shape[1] :]
            assert batched[row].tolist() == alone.tolist()


class ForceTokens(LogitsProcessor):
    """Forces `tokens[i]` at generation step i."""

    def __init__(self, prompt_length, tokens):
        self.prompt_length, self.tokens = prompt_length, tokens

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        if step < len(self.tokens):
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.tokens[step]] = 0.0
        return scores


def test_generation_stops_at_terminator_and_hides_it(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    tokenizer = processor.tokenizer
    answer = tokenizer.encode("hello world", add_special_tokens=False)
    terminator = tokenizer.encode("@" + STOP_STRING, add_special_tokens=False)[
        len(tokenizer.encode("@", add_special_tokens=False)) :
    ]
    inputs = chat_inputs(processor, [conversation("Say hello", Image.new("RGB", (64, 64)))], padding=True)
    prompt_length = inputs["input_ids"].shape[1]
    forced = LogitsProcessorList([ForceTokens(prompt_length, answer + terminator + answer)])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, logits_processor=forced)
    new_tokens = output[0, prompt_length:].tolist()
    assert new_tokens == answer + terminator  # stopped right after "\n###"
    assert processor.decode(new_tokens, skip_special_tokens=True) == "hello world"
    assert processor.post_process_image_text_to_text(output[:, prompt_length:]) == ["hello world"]
    # Decoding a whole prompt keeps its inner separators.
    assert "\n### Human:" in processor.decode(output[0], skip_special_tokens=True)


def test_generation_stops_at_eos(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = chat_inputs(processor, [conversation("Hi")], padding=True)
    prompt_length = inputs["input_ids"].shape[1]
    forced = LogitsProcessorList([ForceTokens(prompt_length, [300, processor.tokenizer.eos_token_id, 300])])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=10, logits_processor=forced)
    assert output[0, prompt_length:].tolist() == [300, processor.tokenizer.eos_token_id]


def test_images_are_encoded_once_per_generate(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    calls = []
    handle = model.model.dinov2.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        inputs = chat_inputs(processor, [conversation("Describe", Image.new("RGB", (300, 100)))], padding=True)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=5)
    finally:
        handle.remove()
    assert calls == [3]


def test_streaming_yields_the_generated_text(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = chat_inputs(processor, [conversation("Describe", Image.new("RGB", (100, 300)))], padding=True)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**inputs, max_new_tokens=8, streamer=streamer)
    thread = threading.Thread(target=model.generate, kwargs=kwargs)
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8)
    expected = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert streamed == expected


def test_pipeline_with_chat_messages(converted_dir, fixture_dir):
    pipe = pipeline("image-text-to-text", model=str(converted_dir))
    messages = conversation("Describe the image in detail.", str(fixture_dir / "inputs" / "synthetic_640x320.png"))
    result = pipe(text=messages, max_new_tokens=8, return_full_text=False)[0]["generated_text"]
    processor = AutoProcessor.from_pretrained(converted_dir)
    reference = torch.load(fixture_dir / "reference_outputs.pt", weights_only=True)["greedy_ids"]
    assert result == processor.decode(reference, skip_special_tokens=True)
    chat = pipe(text=messages, max_new_tokens=8)[0]["generated_text"]
    assert chat[-1]["role"] == "assistant" and chat[-1]["content"] == result


def test_bfloat16_inference(converted_dir, fixture_dir):
    model32 = AutoModelForImageTextToText.from_pretrained(converted_dir).eval()
    model16 = AutoModelForImageTextToText.from_pretrained(converted_dir, dtype=torch.bfloat16).eval()
    assert model16.dtype == torch.bfloat16
    processor = AutoProcessor.from_pretrained(converted_dir)
    inputs = chat_inputs(
        processor, [conversation("Describe", str(fixture_dir / "inputs" / "synthetic_640x320.png"))], padding=True
    )
    with torch.no_grad():
        logits32 = model32(**inputs).logits[0, -1]
        logits16 = model16(**inputs).logits[0, -1]
        output = model16.generate(**inputs, max_new_tokens=4)
    assert logits16.dtype == torch.bfloat16 and torch.isfinite(logits16.float()).all()
    # bf16 keeps the prediction: close logits and the same top token.
    assert (logits16.float() - logits32).abs().max() < 0.1 * logits32.abs().max()
    assert logits16.argmax() == logits32.argmax()
    assert output.shape[1] == inputs["input_ids"].shape[1] + 4


def test_training_step_with_gradient_checkpointing():
    model, processor = make_tiny_model_and_processor()
    model.train()
    model.activation_checkpointing_enable()
    inputs = chat_inputs(
        processor, [conversation("Describe", Image.new("RGB", (300, 100), (5, 90, 200)))], padding=True
    )
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.image_token_id, -100)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name in ("visual_projector.linear.weight", "image_tags.start", "language_model.layers.0.mlp.up_proj.weight"):
        assert model.model.get_parameter(name).grad is not None, name
    assert model.model.image_tags.skip.grad.abs().sum() > 0  # the 3:1 image skips two tiles


def test_mixtral_router_logits_and_aux_loss():
    model, processor = make_tiny_model_and_processor("tiny-random-moe")
    inputs = chat_inputs(processor, [conversation("Describe", Image.new("RGB", (200, 200)))], padding=True)
    outputs = model(**inputs, labels=inputs["input_ids"], output_router_logits=True)
    text_config = model.config.text_config
    assert len(outputs.router_logits) == text_config.num_hidden_layers
    assert outputs.router_logits[0].shape[-1] == text_config.num_local_experts
    assert outputs.aux_loss is not None and torch.isfinite(outputs.aux_loss)
    plain = model(**inputs, labels=inputs["input_ids"], output_router_logits=False)
    expected = plain.loss + text_config.router_aux_loss_coef * outputs.aux_loss
    assert torch.allclose(outputs.loss, expected, atol=1e-5)
    with torch.no_grad():
        assert model.generate(**inputs, max_new_tokens=3).shape[1] == inputs["input_ids"].shape[1] + 3


def test_save_and_reload_round_trip(tmp_path):
    model, processor = make_tiny_model_and_processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    reprocessor = AutoProcessor.from_pretrained(tmp_path)
    assert reprocessor.image_processor.skip_padded_tiles and reprocessor.image_processor.tokens_per_view == 259
    inputs = chat_inputs(reprocessor, [conversation("Describe", Image.new("RGB", (300, 100)))], padding=True)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)
    assert reloaded.generation_config.stop_token_sequences == model.generation_config.stop_token_sequences


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bfloat16_generation(converted_dir, fixture_dir):
    model = AutoModelForImageTextToText.from_pretrained(converted_dir, dtype=torch.bfloat16, device_map="cuda")
    processor = AutoProcessor.from_pretrained(converted_dir)
    inputs = chat_inputs(
        processor, [conversation("Describe", str(fixture_dir / "inputs" / "synthetic_640x320.png"))], padding=True
    )
    output = model.generate(**inputs.to("cuda"), max_new_tokens=4)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 4


def test_a_reloaded_processor_pads_on_the_left(tiny_model_and_processor, tmp_path):
    """A processor saved after training still pads for generation. TRL's collator pads on the right, which the
    tokenizer backend keeps and `tokenizer.json` saves; a reloaded tokenizer then pads on the right by default."""
    processor = copy.deepcopy(tiny_model_and_processor[1])
    processor(text=["a b c d", "b"], padding=True, padding_side="right")  # as TRL's collator calls it
    processor.save_pretrained(tmp_path)
    for reloaded in (SphinxXProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        batch = chat_inputs(reloaded, [conversation("Hi"), conversation("A longer question than that")], padding=True)
        assert (batch["attention_mask"][:, -1] == 1).all() and not batch["attention_mask"][:, 0].all()
        right = reloaded(text=["a b c d", "b"], padding=True, padding_side="right")
        assert right["attention_mask"][1][-1] == 0
