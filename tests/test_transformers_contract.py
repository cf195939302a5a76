"""The contract transformers' models keep (the checks of its common test mixins), as users call it on SPHINX-X.

Two placeholder conventions are covered (see `SphinxXModel.embed_input_ids`): `<image>` inside the LLM's vocabulary
(`in_vocab`, LLaVA's convention) and one past it (`reference`, converted checkpoints).
"""

import io
import json
import warnings
from contextlib import redirect_stdout

import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CompileConfig,
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    TextStreamer,
    pipeline,
)

import sphinx_x
from sphinx_x.conversion.accessory import build_tokenizer, generation_config
from sphinx_x.presets import blip2_qformer, llama, small_encoders
from sphinx_x.processors.processing_sphinx_x import STOP_STRING

from conftest import FIXTURE, chat_inputs


VOCAB = 512  # the fixture tokenizer's SentencePiece vocabulary; `<image>` is appended as id 512


def micro_config(in_vocab: bool, **overrides) -> sphinx_x.SphinxXConfig:
    """A 32-px canvas of 2x2 tiles, 7 positions per view (35 per image), 2-layer LLM: fast enough to run everything."""
    return sphinx_x.SphinxXConfig(
        text_config=llama(32, 64, 2, 4, 2, vocab=VOCAB + 1 if in_vocab else VOCAB, max_positions=512),
        **small_encoders([8, 16, 24], [1, 1, 1], 16, 16, 2, 2, 28, convnext_patch_size=2),
        tile_size=16,
        image_grid=[2, 2],
        image_token_id=VOCAB,
        **overrides,
    )


def micro_model(in_vocab: bool, seed: int = 0, **kwargs) -> sphinx_x.SphinxXForConditionalGeneration:
    torch.manual_seed(seed)
    model = sphinx_x.SphinxXForConditionalGeneration._from_config(micro_config(in_vocab), **kwargs).eval()
    model.generation_config = generation_config(build_tokenizer(FIXTURE / "checkpoint"))
    return model


@pytest.fixture(scope="module")
def processor():
    config = micro_config(in_vocab=True)
    image_processor = sphinx_x.SphinxXImageProcessor.from_model_config(config)
    return sphinx_x.SphinxXProcessor(image_processor=image_processor, tokenizer=build_tokenizer(FIXTURE / "checkpoint"))


@pytest.fixture(scope="module", params=[True, False], ids=["in_vocab", "reference"])
def model(request):
    return micro_model(request.param)


def conversation(text, image=None):
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def inputs(processor):
    images = [Image.new("RGB", (60, 20), (200, 10, 10)), Image.new("RGB", (20, 40), (10, 10, 200))]
    conversations = [conversation("What colour is it?", images[0]), conversation("And this one?", images[1])]
    return chat_inputs(processor, conversations, padding=True)


def test_image_positions_follow_the_processor(processor, inputs):
    assert processor.image_token_id == VOCAB
    assert inputs["image_tile_mask"].tolist() == [[True, True, False, False], [True, False, True, False]]
    assert (inputs["input_ids"] == VOCAB).sum(1).tolist() == [3 * 7 + 2] * 2


# 1. Placeholder ids without images are ordinary tokens (assisted decoding runs the assistant without images).


def test_placeholders_without_images_are_ordinary_tokens(model, inputs):
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        embeds = model.model.embed_input_ids(inputs["input_ids"])
        from_embeds = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    assert logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    torch.testing.assert_close(logits, from_embeds)
    row = VOCAB if model.config.text_config.vocab_size > VOCAB else 0  # the reference id takes row 0
    assert torch.equal(embeds[inputs["input_ids"] == VOCAB][0], model.get_input_embeddings().weight[row])


def test_assisted_decoding_equals_greedy(model, inputs):
    assistant = micro_model(model.config.text_config.vocab_size > VOCAB, seed=1)
    inputs = {key: value[:1] for key, value in inputs.items()}  # transformers assists one sequence at a time
    with torch.no_grad():
        greedy = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assisted = model.generate(
            **inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, assistant_model=assistant
        )
    assert torch.equal(assisted, greedy)


# 2. Images through `inputs_embeds`: found by the placeholder's embedding row, which only an in-vocabulary id has.


def test_inputs_embeds_with_images(model, inputs):
    embeds = model.get_input_embeddings()
    if model.config.text_config.vocab_size == VOCAB:
        with pytest.raises(ValueError, match="placeholder id .512. inside the embedding table .512 rows.*input_ids"):
            model(inputs_embeds=embeds(inputs["input_ids"].clamp(max=VOCAB - 1)), pixel_values=inputs["pixel_values"])
        return
    with torch.no_grad():
        from_ids = model(**inputs).logits
        kwargs = {key: value for key, value in inputs.items() if key != "input_ids"}
        from_embeds = model(inputs_embeds=embeds(inputs["input_ids"]), **kwargs).logits
    torch.testing.assert_close(from_embeds, from_ids)


def test_resized_embeddings_keep_the_placeholder(inputs):
    model = micro_model(in_vocab=False)
    model.resize_token_embeddings(VOCAB + 8)
    assert model.config.text_config.vocab_size == VOCAB + 8
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == VOCAB + 8 and torch.isfinite(logits).all()


# 3-5. `return_dict=False`, the deprecated `past_key_values=`, `get_image_features`' outputs.


@pytest.mark.parametrize("model_class", ["SphinxXModel", "SphinxXForConditionalGeneration"])
def test_return_dict_false_gives_the_same_tuple(model_class, inputs):
    torch.manual_seed(0)
    model = getattr(sphinx_x, model_class)(micro_config(in_vocab=True)).eval()
    with torch.no_grad():
        as_dict = model(**inputs, use_cache=False)
        as_tuple = model(**inputs, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple)
    first = as_dict.logits if model_class == "SphinxXForConditionalGeneration" else as_dict.last_hidden_state
    assert torch.equal(as_tuple[0], first)


def test_past_key_values_keyword_still_works(model, inputs):
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        next_ids = prefill.logits[:, -1:].argmax(-1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(next_ids)], dim=1)
        reference_cache = DynamicCache(config=model.config.text_config)
        model(**inputs, cache=reference_cache)
        expected = model(input_ids=next_ids, attention_mask=mask, cache=reference_cache).logits
        with pytest.warns(FutureWarning, match="past_key_values"):
            got = model(input_ids=next_ids, attention_mask=mask, past_key_values=prefill.cache).logits
    torch.testing.assert_close(got, expected)


def test_get_image_features_outputs(inputs):
    model = micro_model(in_vocab=True, attn_implementation="eager")
    pixel_values, tile_mask = inputs["pixel_values"], inputs["image_tile_mask"]
    with torch.no_grad():
        outputs = model.get_image_features(pixel_values, tile_mask, output_hidden_states=True, output_attentions=True)
        as_tuple = model.get_image_features(pixel_values, tile_mask, return_dict=False)
    assert [block.shape[0] for block in outputs.pooler_output] == [3 * 7 + 2] * 2
    assert outputs.last_hidden_state.shape == (6, 5, 32)  # 6 encoded views of 1 + 2x2 tokens
    layers = model.config.dinov2_config.num_hidden_layers
    assert len(outputs.hidden_states) == layers + 1 and outputs.hidden_states[0].shape == (6, 5, 16)
    assert len(outputs.attentions) == layers and outputs.attentions[0].shape == (6, 2, 5, 5)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], outputs.last_hidden_state)


# 6. Inputs that do not fit together.


def test_mismatched_images_and_tile_masks_are_refused(model, inputs):
    expected = r"`image_tile_mask` must be \[batch, num_tiles\] = \[2, 4\] for these `pixel_values`, got \[1, 4\]"
    with pytest.raises(ValueError, match=expected):
        model(**{**inputs, "image_tile_mask": inputs["image_tile_mask"][:1]})
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**{**inputs, **{key: inputs[key][:1] for key in ("pixel_values", "image_tile_mask")}})


# 7. Processor save / reload.


def test_processor_save_and_reload_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path / "first")
    saved = json.loads((tmp_path / "first" / "processor_config.json").read_text())
    # The saved files carry the remote-code map; the objects do not (saving leaves them unchanged).
    assert saved["auto_map"] == {"AutoProcessor": "processing_sphinx_x.SphinxXProcessor"}
    assert saved["image_processor"]["auto_map"]["AutoImageProcessor"].endswith("SphinxXImageProcessor")
    loaders = (AutoProcessor.from_pretrained, sphinx_x.SphinxXProcessor.from_pretrained)
    for reloaded in (load(tmp_path / "first") for load in loaders):
        assert reloaded.to_dict() == processor.to_dict()
        assert repr(reloaded.image_processor) == repr(processor.image_processor)
        reloaded.save_pretrained(tmp_path / "second")
        assert json.loads((tmp_path / "second" / "processor_config.json").read_text()) == saved


# 8. Attention backends per sub-model.


def attention_of(model) -> dict:
    config = model.config
    keys = ("text_config", "convnext_config", "dinov2_config")
    return {key: getattr(config, key)._attn_implementation for key in keys}


def test_one_attention_backend_reaches_every_sub_model_that_has_attention(inputs):
    logits = {}
    for backend in ("eager", "sdpa"):
        model = micro_model(in_vocab=True, attn_implementation=backend)
        assert attention_of(model) == {"text_config": backend, "convnext_config": backend, "dinov2_config": backend}
        assert model.model.language_model.config._attn_implementation == backend
        assert model.model.dinov2.model.config._attn_implementation == backend
        with torch.no_grad():
            logits[backend] = model(**inputs).logits
    real = inputs["attention_mask"].bool()  # padded positions attend to nothing: their outputs are arbitrary
    torch.testing.assert_close(logits["sdpa"][real], logits["eager"][real], rtol=1e-5, atol=1e-5)

    model.set_attn_implementation("eager")  # switching later works the same way
    assert attention_of(model) == {"text_config": "eager", "convnext_config": "eager", "dinov2_config": "eager"}
    model.set_attn_implementation("sdpa")
    assert attention_of(model) == {"text_config": "sdpa", "convnext_config": "sdpa", "dinov2_config": "sdpa"}
    model.set_attn_implementation({"text_config": "eager"})  # an explicit choice per sub-config is kept
    assert attention_of(model) == {"text_config": "eager", "convnext_config": "sdpa", "dinov2_config": "sdpa"}


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flash_attention_2"])
def test_q_former_takes_sdpa_under_flash_attention(backend, monkeypatch):
    """SPHINX (v1) checkpoints hold BLIP-2's Q-Former, which has no flash-attention; the rest of the model keeps it.
    flash-attn cannot install here, so under flash-attention transformers' availability checks are replaced by the
    support check alone (a class without `_supports_flash_attn` refuses it); eager and SDPA run the real checks."""
    from transformers.modeling_utils import PreTrainedModel

    def support_check_only(self, requested, *args, **kwargs):
        if requested and "flash" in requested and not self._supports_flash_attn:
            raise ValueError(f"{type(self).__name__} has no flash-attention")
        return requested or "sdpa"

    if backend == "flash_attention_2":
        monkeypatch.setattr(PreTrainedModel, "_check_and_adjust_attn_implementation", support_check_only)
        monkeypatch.setattr(PreTrainedModel, "get_correct_attn_implementation", support_check_only)
    config = micro_config(in_vocab=True, qformer_config=blip2_qformer())
    config.qformer_config.vision_config.update(dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32, image_size=28, patch_size=14))
    config.qformer_config.qformer_config.update(dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=32, encoder_hidden_size=16))
    config.qformer_config.num_query_tokens = 2
    model = sphinx_x.SphinxXForConditionalGeneration._from_config(config, attn_implementation=backend)
    qformer = "sdpa" if backend == "flash_attention_2" else backend
    for _ in ("after init", "after set_attn_implementation"):
        assert model.model.language_model.config._attn_implementation == backend
        assert model.model.dinov2.model.config._attn_implementation == backend
        assert model.model.qformer.vision_model.config._attn_implementation == backend
        assert model.model.qformer.qformer.config._attn_implementation == qformer
        model.set_attn_implementation("eager")
        model.set_attn_implementation(backend)


# 9. Static cache and compiled decoding.


def test_static_cache_and_compiled_decode_equal_the_default(inputs):
    model = micro_model(in_vocab=True)
    assert model._can_compile_fullgraph
    kwargs = dict(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told
    with torch.no_grad():
        default = model.generate(**kwargs)
        static = model.generate(**kwargs, cache_implementation="static")
        compiled = model.generate(**kwargs, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(static, default) and torch.equal(compiled, default)


# Streaming and the pipeline, as a new user tries them.


class ForceTokens(LogitsProcessor):
    """Forces `tokens[i]` at generation step i."""

    def __init__(self, tokens):
        self.tokens, self.start = tokens, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        step = input_ids.shape[1] - self.start
        if step < len(self.tokens):
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.tokens[step]] = 0.0
        return scores


def answer_tokens(tokenizer, answer: str, space: bool = True) -> list[int]:
    """The ids of `answer + "\\n###"` as they follow the generation prompt, the first piece with SentencePiece's word
    start (`"▁blue"`, as the reference's answers begin) or without (`"blue"`)."""
    prefix = tokenizer.encode("@", add_special_tokens=False)
    return tokenizer.encode("@" + " " * space + answer + STOP_STRING, add_special_tokens=False)[len(prefix) :]


@pytest.mark.parametrize("answer", ["blue", "the shape is\nblue"])
def test_text_streamer_prints_the_answer_without_the_terminator(processor, answer):
    model = micro_model(in_vocab=True)
    inputs = chat_inputs(processor, [conversation("Colour?", Image.new("RGB", (40, 40)))])
    forced = LogitsProcessorList([ForceTokens(answer_tokens(processor.tokenizer, answer) + [300, 300])])
    printed = io.StringIO()
    with redirect_stdout(printed), torch.no_grad():
        streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        output = model.generate(**inputs, max_new_tokens=20, logits_processor=forced, streamer=streamer)
    decoded = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert decoded == answer
    assert printed.getvalue() == answer + "\n"  # TextStreamer ends with a newline of its own


def test_pipeline_answers_like_decode_in_every_form(processor):
    model = micro_model(in_vocab=True)
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    image = Image.new("RGB", (40, 40), (10, 10, 200))
    for space in (True, False):
        tokens = answer_tokens(processor.tokenizer, "blue", space)
        forced = {"generate_kwargs": {"logits_processor": LogitsProcessorList([ForceTokens(tokens)])}}
        forced["max_new_tokens"] = 12
        expected = processor.decode(tokens, skip_special_tokens=True)
        assert expected == "blue"
        chat = pipe(text=conversation("Colour?", image), return_full_text=False, **forced)
        assert chat[0]["generated_text"] == expected
        forced["generate_kwargs"]["logits_processor"] = LogitsProcessorList([ForceTokens(tokens)])
        full = pipe(text=conversation("Colour?", image), **forced)[0]["generated_text"]
        assert full[-1] == {"role": "assistant", "content": expected}
        # The form LLaVA users try: an image and a plain text, no chat messages (the image goes in front).
        forced["generate_kwargs"]["logits_processor"] = LogitsProcessorList([ForceTokens(tokens)])
        plain = pipe(images=image, text=" Human: Colour?\n### Assistant:", return_full_text=False, **forced)
        assert plain[0]["generated_text"] == expected


# One image per conversation, as SPHINX is trained.


def test_several_images_or_a_later_image_are_refused(processor):
    image = Image.new("RGB", (40, 40))
    two_images = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Hi"}]}]
    later = conversation("Hi") + [{"role": "assistant", "content": "Hello"}] + conversation("And this?", image)
    for messages, error in ((two_images, "one image per conversation"), (later, "in the first user message")):
        with pytest.raises(Exception, match=error):
            processor.apply_chat_template(messages, add_generation_prompt=True)
    with pytest.raises(ValueError, match="one image per prompt"):
        processor(text="<image> Hi", images=[[image, image]])


def test_no_warning_for_a_plain_forward(model, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with torch.no_grad():
            model(**inputs)
