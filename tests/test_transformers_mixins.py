"""transformers' own `ModelTesterMixin` (from the installed version's sdist, see `transformers_common/`) on a tiny
SPHINX-X, the way transformers runs it on LLaVA-NeXT: random inputs with the image placeholders first, composite
config, SDPA.

The skips and expected failures are LLaVA-NeXT's (its test in transformers' repository), plus two marked "Not in
LLaVA-NeXT's test" with their reason. transformers' generation, pipeline and processor mixins need files the 5.24.0
sdist does not ship (see `transformers_common/README.md`); their checks are in `test_transformers_contract.py`."""

import unittest

import pytest
import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, MODEL_MAPPING_NAMES

import sphinx_x
from sphinx_x.presets import llama, small_encoders

from transformers_common import load_test_modeling_common


common = load_test_modeling_common()
ModelTesterMixin, floats_tensor, ids_tensor = common.ModelTesterMixin, common.floats_tensor, common.ids_tensor


class SphinxXModelTester:
    """A 32-px canvas of 2x2 tiles, the last one skipped (4 views of 7 positions + 1 skip position = 29 image
    positions), a 2-layer Llama of width 32."""

    def __init__(self, parent, batch_size=3, text_length=7, vocab_size=99, image_token_id=3):
        self.parent = parent
        self.batch_size = batch_size
        self.vocab_size = vocab_size
        self.image_token_id = image_token_id
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_image_tokens = 4 * 7 + 1
        self.seq_length = self.num_image_tokens + text_length
        self.is_training = True
        self.text_config = {"vocab_size": vocab_size}

    def get_config(self) -> sphinx_x.SphinxXConfig:
        text_config = llama(self.hidden_size, 37, self.num_hidden_layers, self.num_attention_heads, 2, self.vocab_size)
        text_config.pad_token_id, text_config.bos_token_id, text_config.eos_token_id = 0, 1, 2
        return sphinx_x.SphinxXConfig(
            text_config=text_config,
            **small_encoders([8, 16, 24], [1, 1, 1], 16, 16, 2, 2, 28, convnext_patch_size=2),
            tile_size=16,
            image_grid=[2, 2],
            image_token_id=self.image_token_id,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        # Text ids avoid the placeholder (and BOS/EOS/pad); the image block comes first, as the processor puts it.
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 4) + 4
        input_ids[:, : self.num_image_tokens] = self.image_token_id
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": floats_tensor([self.batch_size, 3, 32, 32]),
            "image_tile_mask": torch.tensor([[True, True, True, False]] * self.batch_size),
        }
        return config, inputs


class SphinxXModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (sphinx_x.SphinxXModel, sphinx_x.SphinxXForConditionalGeneration)
    _is_composite = True
    # LLaVA-NeXT's test sets this one:
    test_resize_embeddings = False
    # Not in LLaVA-NeXT's test (stored version): its shape check expects one vision tower's `[images, ..., width]`;
    # SPHINX-X's `last_hidden_state` holds the projected tokens of every encoded view (`[views, tokens, LLM width]`).
    skip_test_image_features_output_shape = True

    @classmethod
    def setUpClass(cls):
        # The mixin tells base models from heads (which get labels, which train) by transformers' own name tables,
        # where native models are listed; `AutoModel.register` does not add to them. List SPHINX-X as natives are.
        MODEL_MAPPING_NAMES["sphinx_x"] = "SphinxXModel"
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES["sphinx_x"] = "SphinxXForConditionalGeneration"

    @classmethod
    def tearDownClass(cls):
        MODEL_MAPPING_NAMES.pop("sphinx_x")
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.pop("sphinx_x")

    def setUp(self):
        self.model_tester = SphinxXModelTester(self)

    @unittest.skip(
        "Not in LLaVA-NeXT's test: transformers' GenerationTesterMixin (tests/generation/test_utils.py) is not in the "
        "5.24.0 sdist vendored here, so this class cannot inherit it; generation is tested in "
        "test_transformers_contract.py and test_generation.py."
    )
    def test_generation_tester_mixin_inheritance(self):
        pass

    # As LLaVA-NeXT's test (here: DINOv2's `mask_token` is only used for masked image modelling).
    @pytest.mark.xfail(reason="This architecture seems to not compute gradients for some layer.")
    def test_training_gradient_checkpointing(self):
        super().test_training_gradient_checkpointing()

    @pytest.mark.xfail(reason="This architecture seems to not compute gradients for some layer.")
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        super().test_training_gradient_checkpointing_use_reentrant_false()

    @pytest.mark.xfail(reason="This architecture seems to not compute gradients for some layer.")
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        super().test_training_gradient_checkpointing_use_reentrant_true()

    @unittest.skip(
        "VLMs need lots of steps to prepare images/mask correctly to get pad-free inputs. Can be tested as part of "
        "LLM test"
    )
    def test_flash_attention_2_padding_matches_padding_free_with_position_ids(self):
        pass
