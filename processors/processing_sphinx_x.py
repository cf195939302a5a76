"""SPHINX-X processor: image processor + tokenizer, placeholder expansion and the reference chat format."""

import bisect
import re

import torch
from transformers import ProcessorMixin
from transformers.processing_utils import MultiModalData, ProcessingKwargs

from .grounding import format_box, ground_text


# The reference conversation (LLaMA2-Accessory `conv_v1_2`): the image block sits right after BOS, before the system
# prompt; turns are " Human: ..." / " Assistant: ..." each closed by "\n###"; the open assistant turn ends with
# " Assistant:" (no trailing space). Assistant text and its terminator are wrapped in generation markers for TRL's
# `assistant_only_loss`, with the space before the answer: SentencePiece may give it a token of its own ("▁"), which
# the reference trains as part of the answer segment. Training conversations end with EOS, as the reference
# tokenises them.
DEFAULT_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# SPHINX is trained with one image per conversation, its block right after BOS: several images, or an image in a later
# turn (which would be moved before the first), are refused rather than silently reordered.
ONE_IMAGE_ERROR = (
    "SPHINX takes one image per conversation (it is trained that way); this conversation has several. "
    "Ask about each image in its own conversation."
)
FIRST_TURN_ERROR = (
    "SPHINX reads the image before the whole conversation; put the image in the first user message, not a later turn."
)
GENERATION_PROMPT = " Assistant:"
CHAT_TEMPLATE = (
    "{%- macro text_of(message) -%}"
    "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
    "{%- else -%}{{- message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ')"
    " | trim -}}{%- endif -%}"
    "{%- endmacro -%}"
    "{{- bos_token -}}"
    "{%- set state = namespace(images=0, users=0) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set state.users = state.users + 1 -%}{%- endif -%}"
    "{%- if message['content'] is not string -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{%- if state.images > 0 -%}{{- raise_exception('" + ONE_IMAGE_ERROR + "') -}}{%- endif -%}"
    "{%- if message['role'] != 'user' or state.users != 1 -%}{{- raise_exception('" + FIRST_TURN_ERROR + "') -}}"
    "{%- endif -%}"
    "{%- set state.images = 1 -%}<image>"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{{- text_of(messages[0]) -}}"
    "{%- else -%}{{- '" + DEFAULT_SYSTEM_PROMPT.replace("'", "\\'") + "' -}}{%- endif -%}"
    "{{- '\\n\\n###' -}}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{- ' Human: ' + text_of(message) + '\\n###' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- ' Assistant:' -}}"
    "{%- generation -%}{{- ' ' + text_of(message) + '\\n###' -}}{%- endgeneration -%}"
    "{%- else -%}{{- raise_exception('SPHINX conversations have system, user and assistant roles only, got '"
    " + message['role']) -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + GENERATION_PROMPT + "' -}}"
    "{%- elif messages and messages[-1]['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
)
STOP_STRING = "\n###"
# ChatML (`<|im_start|>role\n...<|im_end|>\n`), for LLMs instruction-tuned in it (the demo's SmolLM2): keeping the
# format an LLM was tuned with keeps its instruction following. Images stay where they are in the conversation, each
# `<image>` at the start of its user turn; assistant text and its `<|im_end|>` are the generation (loss) span.
CHATML_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML_TEMPLATE = (
    "{%- macro text_of(message) -%}"
    "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
    "{%- else -%}{{- message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ')"
    " | trim -}}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + CHATML_SYSTEM_PROMPT + "<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- text_of(message) + '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is not string -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image>{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- text_of(message) + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


class SphinxXProcessorKwargs(ProcessingKwargs, total=False):
    _defaults = {"text_kwargs": {"padding": False}}


class SphinxXProcessor(ProcessorMixin):
    r"""
    Turns images and text into SPHINX-X inputs.

    Each `<image>` in the text becomes the run of placeholder tokens (the tokenizer's `<image>` id, the model's
    `config.image_token_id`) the model fills, its length from `SphinxXImageProcessor.num_image_tokens` (kept views x
    tokens per view + one per skipped tile). One image per prompt, as SPHINX is trained; a prompt without `<image>`
    given one image gets it in front. Batches are padded on the left for generation. Decoding drops the reference
    terminator `"\n###"` that ends an answer.

    Args:
        image_processor (`SphinxXImageProcessor`), tokenizer (`LlamaTokenizer`-style, with an `<image>` token),
        chat_template (`str`, *optional*): defaults to the reference conversation format (`CHAT_TEMPLATE`); LLMs tuned
            on ChatML use `CHATML_TEMPLATE`.
    """

    valid_processor_kwargs = SphinxXProcessorKwargs

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = "<image>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError("The tokenizer has no `<image>` token; add it with `tokenizer.add_special_tokens`.")
        # Generation needs left padding. A tokenizer's own side outranks the processor's defaults when merging call
        # arguments, and a reloaded tokenizer comes back right-padded unless its config says otherwise (training
        # libraries also switch it); callers that want right padding (TRL's collator) ask for it in the call.
        tokenizer.padding_side = "left"
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)
        fillers = "|".join(re.escape(token) for token in {tokenizer.pad_token, tokenizer.eos_token} if token)
        self._trailing_stop = re.compile(re.escape(STOP_STRING) + rf"(?:\s|{fillers})*$")

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """`ProcessorMixin.__call__`, one image per text: a text without `<image>` given one image gets it in front (the
        reference's layout, right after BOS), as in `pipe(images=image, text="...")`; more are refused."""
        if text is not None and images is not None:
            texts = [text] if isinstance(text, str) else list(text)
            nested = images if isinstance(images, (list, tuple)) else [images]
            flat_images = [image for item in nested for image in (item if isinstance(item, (list, tuple)) else [item])]
            counts = [piece.count(self.image_token) for piece in texts]
            if max(counts, default=0) > 1 or len(flat_images) > len(texts):
                raise ValueError(
                    f"SPHINX takes one image per prompt; got {len(flat_images)} images for {len(texts)} prompts "
                    f"({sum(counts)} `<image>` markers). Ask about each image in its own prompt."
                )
            if sum(counts) == 0 and len(flat_images) == len(texts):
                texts = [self.image_token + piece for piece in texts]
                text = texts[0] if isinstance(text, str) else texts
        self.check_images_per_prompt(images, text)
        return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """`ProcessorMixin.save_pretrained`, without leaving the saved files' `auto_map` on this processor and its image
        processor (transformers sets it on the objects it saves), so that a saved and reloaded processor equals this
        one."""
        saved = super().save_pretrained(save_directory, **kwargs)
        for component in (self, self.image_processor):
            component.__dict__.pop("auto_map", None)
        return saved

    def apply_chat_template(self, conversation, *args, **kwargs):
        conversations = conversation if conversation and isinstance(conversation[0], (list, tuple)) else [conversation]
        if not conversation or any(not messages for messages in conversations):
            raise ValueError("The conversation is empty: pass at least one message, e.g. [{'role': 'user', ...}].")
        return super().apply_chat_template(conversation, *args, **kwargs)

    def check_images_per_prompt(self, images, text) -> None:
        """Each `<image>` of the text needs one image, and images given per prompt (a list of lists) must match
        their own prompt: otherwise images would silently move to another prompt."""
        if text is None:
            return
        texts = [text] if isinstance(text, str) else list(text)
        counts = [prompt.count(self.image_token) if isinstance(prompt, str) else 0 for prompt in texts]
        if isinstance(images, (list, tuple)) and images and all(isinstance(item, (list, tuple)) for item in images):
            if len(images) != len(texts):
                raise ValueError(
                    f"images are given per prompt ({len(images)} lists) for {len(texts)} prompts; pass one list "
                    "of images per prompt (an empty list for a prompt without images)."
                )
            for index, (count, prompt_images) in enumerate(zip(counts, images)):
                if count != len(prompt_images):
                    raise ValueError(
                        f"prompt {index} holds {count} `<image>` but {len(prompt_images)} images are given for it; "
                        "give each prompt exactly its own images."
                    )
            return
        if images is None:
            n_images = 0
        elif isinstance(images, (list, tuple)):
            n_images = sum(len(item) if isinstance(item, (list, tuple)) else 1 for item in images)
        else:
            n_images = 1
        if sum(counts) != n_images:
            raise ValueError(
                f"the text holds {sum(counts)} `<image>` (per prompt: {counts}) but {n_images} images were given. "
                "Each `<image>` marks where one image goes; if `<image>` is part of your own text, remove or "
                "reword it (e.g. `< image >`), and pass one image per `<image>`."
            )

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_processor.num_image_tokens(image_inputs["image_tile_mask"][image_idx])

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens per image for `(height, width)` sizes (used by serving engines such as vLLM)."""
        counts = [
            self.image_processor.num_image_tokens(self.image_processor.tile_mask(width, height))
            for height, width in image_sizes or []
        ]
        return MultiModalData(num_image_tokens=counts, num_image_patches=[1] * len(counts))

    def _adjust_assistant_masks_indices(self, processed_dict, generation_indices: list[list[tuple[int, int]]]):
        """`ProcessorMixin`'s assistant mask (tokens overlapping an assistant span, spans shifted past expanded image
        placeholders), computed with one tensor comparison per span: the base class compares every token's offsets
        one tensor element at a time, two thirds of the time a training batch takes to collate."""
        offset_mapping = processed_dict.pop("offset_mapping")
        replacements = processed_dict.pop("text_replacement_offsets", None) or [[]] * len(processed_dict["input_ids"])
        masks = []
        for offsets, spans, replaced in zip(offset_mapping, generation_indices, replacements):
            offsets = torch.as_tensor(offsets).reshape(-1, 2)  # [seq_len, 2] character (start, end) per token
            placeholder_ends = [replacement["span"][1] for replacement in replaced]
            chars_gained = [0] + [replacement["new_span"][1] - replacement["span"][1] for replacement in replaced]
            mask = torch.zeros(len(offsets), dtype=torch.bool)
            for span in spans:
                start, end = (char + chars_gained[bisect.bisect_right(placeholder_ends, char)] for char in span)
                mask |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
            masks.append(mask.int().tolist())
        processed_dict["assistant_masks"] = masks
        return processed_dict

    def strip_stop_string(self, text: str) -> str:
        """Drop the reference terminator `"\\n###"` that ends a generated answer (and padding decoded after it)."""
        return self._trailing_stop.sub("", text)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return [self.strip_stop_string(text) for text in self.tokenizer.batch_decode(*args, **kwargs)]

    def decode(self, *args, **kwargs) -> str:
        return self.strip_stop_string(self.tokenizer.decode(*args, **kwargs))

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs) -> list[str]:
        """Decoded sequences without the terminator, the answer after the last `" Assistant:"` always one space away
        from it, as the chat format writes it. SentencePiece keeps or drops the answer's leading space depending on the
        first token; this makes the pipeline's answer (the text after the decoded prompt, which ends `" Assistant: "`)
        equal to `processor.decode` of the new tokens, e.g. `"blue"`, never `" blue"`."""
        texts = []
        for text in self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs):
            head, prompt, answer = text.rpartition(GENERATION_PROMPT)
            texts.append(head + prompt + " " + answer.removeprefix(" ") if prompt else text)
        return texts

    def grounding_placement(self) -> tuple[str, tuple[int, int]]:
        """`(placement, canvas (height, width))` of this processor's canvas: SPHINX-X's top-left image with skipped
        tiles, or the centred image of released checkpoints."""
        placement = "top_left" if self.image_processor.skip_padded_tiles else "center"
        return placement, tuple(self.image_processor.canvas_size)

    def format_box(self, box, image_size: tuple[int, int], phrase: str | None = None) -> str:
        """Pixel box `[x1, y1, x2, y2]`, point `[x, y]` or a list of them on an image of `image_size` `(height,
        width)` -> the text this model reads and writes, e.g. `[0.12,0.34,0.56,0.78]`, or `<p>phrase</p> [...]`."""
        height, width = image_size
        return format_box(box, width, height, *self.grounding_placement(), phrase=phrase)

    def post_process_grounding(self, text, image_sizes):
        """Boxes and points of generated answers, in pixels of the original images.

        Args:
            text (`str` or `list[str]`): decoded answers.
            image_sizes: `(height, width)` of the image each answer is about (one pair for one answer).

        Returns:
            per answer (a `dict` for a `str`, else a list): `{"text": the answer without box markup, "entities":
            [{"phrase": str ('' for a bare box), "boxes": [[x1, y1, x2, y2], ...], "points": [[x, y], ...]}]}`,
            entities in the order of the text. Malformed or cut-off boxes are left out, never raised.
        """
        single = isinstance(text, str)
        texts, sizes = ([text], [image_sizes]) if single else (list(text), list(image_sizes))
        if len(texts) != len(sizes):
            raise ValueError(f"post_process_grounding got {len(texts)} answers and {len(sizes)} image sizes; pass one "
                             "(height, width) per answer.")
        results = [ground_text(answer, width, height, *self.grounding_placement()) for answer, (height, width)
                   in zip(texts, sizes)]
        return results[0] if single else results

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_tile_mask"]


__all__ = ["CHATML_TEMPLATE", "CHAT_TEMPLATE", "SphinxXProcessor"]
