"""SPHINX-X skip tokens on the tiny random preset (real geometry: 1024 canvas, 2x2 grid of 512 tiles, 259 positions
per encoded view): tiles the image does not touch are not encoded and cost exactly one learned `image_skip` row."""

import contextlib

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import chat_inputs, make_tiny_model_and_processor


TOKENS_PER_VIEW = 259
CONVNEXT_VIEW, DINOV2_VIEW, TILE = 512, 224, 512


def random_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def conversation(image, text: str = "Describe the image."):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def expected_positions(tile_mask) -> int:
    kept = int(np.count_nonzero(np.asarray(tile_mask)))
    return (1 + kept) * TOKENS_PER_VIEW + (len(tile_mask) - kept)


def tile_of(pixel_values: torch.Tensor, tile: int) -> torch.Tensor:
    """`[3, 512, 512]` canvas tile (row-major index on the 2x2 grid) of one `[3, 1024, 1024]` canvas."""
    row, col = divmod(tile, 2)
    return pixel_values[:, row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]


@contextlib.contextmanager
def record_calls(model):
    """Inputs of every call to the two encoders, and the kwargs of every call to the language model."""
    calls = {"convnext": [], "dinov2": [], "language_model": []}
    inner = model.model

    def encoder_hook(name):
        return lambda module, args, output: calls[name].append(args[0].detach().clone())

    def lm_hook(module, args, kwargs):
        calls["language_model"].append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    handles = [
        inner.convnext.register_forward_hook(encoder_hook("convnext")),
        inner.dinov2.register_forward_hook(encoder_hook("dinov2")),
        inner.language_model.register_forward_pre_hook(lm_hook, with_kwargs=True),
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def assert_image_block(block: torch.Tensor, tile_mask, model):
    """`block` `[n, hidden]`: the image positions of one image, checked view by view against the layout."""
    inner = model.model
    start, end, skip = (tag.detach() for tag in (inner.image_tags.start, inner.image_tags.end, inner.image_tags.skip))
    assert block.shape[0] == expected_positions(tile_mask)
    cursor = 0
    for keep in [True, *[bool(k) for k in tile_mask]]:
        if keep:
            view = block[cursor : cursor + TOKENS_PER_VIEW]
            torch.testing.assert_close(view[0], start, rtol=0, atol=0)
            torch.testing.assert_close(view[-1], end, rtol=0, atol=0)
            # The grid tokens are encoder features, none of them is the skip embedding.
            assert not any(torch.equal(row, skip) for row in view[1:-1])
            cursor += TOKENS_PER_VIEW
        else:
            torch.testing.assert_close(block[cursor], skip, rtol=0, atol=0)
            cursor += 1
    assert cursor == block.shape[0]


def check_single_image(model, processor, image, expected_mask):
    inputs = chat_inputs(processor, conversation(image))
    mask = inputs["image_tile_mask"]
    assert mask.dtype == torch.bool
    assert mask.tolist() == [expected_mask]

    n_expected = expected_positions(expected_mask)
    image_positions = inputs["input_ids"][0] == processor.image_token_id
    assert int(image_positions.sum()) == n_expected
    assert processor.image_token_id == model.config.image_token_id
    # One contiguous run of placeholders.
    where = image_positions.nonzero()[:, 0]
    assert (where[-1] - where[0] + 1).item() == n_expected

    with torch.no_grad(), record_calls(model) as calls:
        outputs = model(**inputs)
    assert outputs.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(outputs.logits).all()

    n_views = 1 + sum(expected_mask)
    assert len(calls["convnext"]) == 1 and len(calls["dinov2"]) == 1
    assert tuple(calls["convnext"][0].shape) == (n_views, 3, CONVNEXT_VIEW, CONVNEXT_VIEW)
    assert tuple(calls["dinov2"][0].shape) == (n_views, 3, DINOV2_VIEW, DINOV2_VIEW)
    # The ConvNeXt views after the global one are exactly the kept canvas tiles, in row-major order.
    kept_tiles = [t for t, keep in enumerate(expected_mask) if keep]
    for view, tile in zip(calls["convnext"][0][1:], kept_tiles):
        torch.testing.assert_close(view, tile_of(inputs["pixel_values"][0], tile), rtol=0, atol=0)

    # The embeddings fed to the language model: the image block is laid out view by view.
    assert len(calls["language_model"]) == 1
    embeds = calls["language_model"][0]["inputs_embeds"][0]
    assert_image_block(embeds[image_positions], expected_mask, model)
    # The same rows come out of `get_image_features`.
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_tile_mask"])
    assert len(features.pooler_output) == 1
    torch.testing.assert_close(features.pooler_output[0], embeds[image_positions], rtol=0, atol=0)
    assert features.last_hidden_state.shape[:2] == (n_views, TOKENS_PER_VIEW - 2)
    return inputs, calls


def test_wide_image_skips_bottom_row(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs, _ = check_single_image(model, processor, random_image(600, 200), [True, True, False, False])
    assert expected_positions([True, True, False, False]) == 3 * 259 + 2 == 779
    # Skipped tiles hold only padding (the image sits at the top-left of the canvas).
    ip = processor.image_processor
    pad = (torch.tensor([122.0, 116.0, 104.0]) / 255 - torch.tensor(ip.image_mean)) / torch.tensor(ip.image_std)
    canvas = inputs["pixel_values"][0]
    for tile in (2, 3):
        torch.testing.assert_close(tile_of(canvas, tile), pad[:, None, None].expand(3, TILE, TILE).float())
    for tile in (0, 1):
        assert not torch.allclose(tile_of(canvas, tile), pad[:, None, None].expand(3, TILE, TILE).float())


def test_square_image_skips_nothing(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    check_single_image(model, processor, random_image(300, 300, seed=1), [True, True, True, True])
    assert expected_positions([True] * 4) == 1295


def test_tall_image_skips_right_column(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    check_single_image(model, processor, random_image(200, 600, seed=2), [True, False, True, False])


@pytest.mark.parametrize(
    "size,expected",
    [
        ((2000, 100), [True, True, False, False]),
        ((100, 2000), [True, False, True, False]),
        ((1000, 499), [True, True, False, False]),
        ((1000, 500), [True, True, False, False]),
        ((1000, 501), [True, True, True, True]),
        ((500, 1000), [True, False, True, False]),
        ((501, 1000), [True, True, True, True]),
    ],
)
def test_extreme_and_boundary_ratios(tiny_model_and_processor, size, expected):
    """A tile is kept iff the image reaches past its edge: at exactly 2:1 the second row is empty."""
    model, processor = tiny_model_and_processor
    check_single_image(model, processor, random_image(*size, seed=3), expected)


def test_no_skipping_encodes_every_tile():
    model, processor = make_tiny_model_and_processor(use_skip_tokens=False)
    assert processor.image_processor.skip_padded_tiles is False
    check_single_image(model, processor, random_image(600, 200), [True, True, True, True])

    # The image processor alone, `skip_padded_tiles=False`: centred image, no tile skipped.
    ip = type(processor.image_processor)(skip_padded_tiles=False)
    out = ip(random_image(600, 200), return_tensors="pt")
    assert out["image_tile_mask"].tolist() == [[True] * 4]
    assert ip.num_image_tokens(out["image_tile_mask"][0]) == 1295


def test_all_true_mask_matches_unskipped_views(tiny_model_and_processor):
    """Skipping replaces views by the skip row and leaves the kept views' features unchanged."""
    model, processor = tiny_model_and_processor
    inputs = processor.image_processor(random_image(600, 200), return_tensors="pt")
    with torch.no_grad():
        skipped = model.model.get_image_features(inputs["pixel_values"], inputs["image_tile_mask"]).pooler_output[0]
        full = model.model.get_image_features(inputs["pixel_values"], torch.ones(1, 4, dtype=torch.bool)).pooler_output[
            0
        ]
        default = model.model.get_image_features(inputs["pixel_values"]).pooler_output[0]
    assert full.shape[0] == default.shape[0] == 1295
    torch.testing.assert_close(default, full, rtol=0, atol=0)
    torch.testing.assert_close(skipped[: 3 * TOKENS_PER_VIEW], full[: 3 * TOKENS_PER_VIEW], rtol=1e-5, atol=1e-5)


def test_token_count_matches_features_for_many_sizes(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    ip = processor.image_processor
    rng = np.random.default_rng(1234)
    sizes = [(1, 1), (1, 777), (777, 1), (1, 2), (2, 1), (2000, 1), (1, 2000), (3, 3), (5, 11), (11, 5)]
    sizes += [tuple(int(v) for v in rng.integers(1, 1500, size=2)) for _ in range(14)]
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = ip(images, return_tensors="pt")
    masks = inputs["image_tile_mask"]
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], masks)
    assert len(features.pooler_output) == len(sizes)
    assert features.last_hidden_state.shape[0] == len(sizes) + int(masks.sum())
    seen = set()
    for (w, h), mask, block in zip(sizes, masks, features.pooler_output):
        # Independent geometry: the second column is touched iff 2w > h, the second row iff 2h > w.
        right, bottom = 2 * w > h, 2 * h > w
        assert mask.tolist() == [True, right, bottom, right and bottom], (w, h)
        n = ip.num_image_tokens(mask)
        assert len(block) == n == expected_positions(mask.tolist()), (w, h)
        assert processor._get_num_multimodal_tokens(image_sizes=[(h, w)]).num_image_tokens == [n]
        assert_image_block(block, mask.tolist(), model)
        seen.add(tuple(mask.tolist()))
    # On a 2x2 grid an image always reaches the second row or the second column.
    assert seen == {(True, True, False, False), (True, False, True, False), (True, True, True, True)}


def test_batch_with_different_masks_matches_single_samples(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    conversations = [
        conversation(random_image(600, 200, seed=5)),
        conversation(random_image(400, 400, seed=6), "What?"),
    ]
    batch = chat_inputs(processor, conversations, padding=True)
    assert batch["image_tile_mask"].tolist() == [[True, True, False, False], [True] * 4]
    per_row = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert per_row == [779, 1295]
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()  # left padding

    with torch.no_grad(), record_calls(model) as calls:
        batched = model(**batch)
    assert len(calls["convnext"]) == 1 and len(calls["dinov2"]) == 1
    assert tuple(calls["convnext"][0].shape) == (8, 3, CONVNEXT_VIEW, CONVNEXT_VIEW)
    assert tuple(calls["dinov2"][0].shape) == (8, 3, DINOV2_VIEW, DINOV2_VIEW)
    embeds = calls["language_model"][0]["inputs_embeds"]
    for row, mask in enumerate(batch["image_tile_mask"].tolist()):
        assert_image_block(embeds[row][batch["input_ids"][row] == processor.image_token_id], mask, model)

    for row, conv in enumerate(conversations):
        alone = chat_inputs(processor, conv)
        n_real = int(batch["attention_mask"][row].sum())
        assert torch.equal(batch["input_ids"][row, -n_real:], alone["input_ids"][0])
        with torch.no_grad():
            single = model(**alone)
        torch.testing.assert_close(batched.logits[row, -1], single.logits[0, -1], rtol=0, atol=1e-4)


def test_skip_embedding_is_trained_only_when_a_tile_is_skipped():
    model, processor = make_tiny_model_and_processor(seed=1)
    model.train()
    skip = model.model.image_tags.skip
    assert isinstance(skip, torch.nn.Parameter) and skip.requires_grad
    assert any(p is skip for p in model.parameters())
    assert skip.shape == (model.config.text_config.hidden_size,)

    def grad_of_skip(image):
        model.zero_grad(set_to_none=True)
        inputs = chat_inputs(processor, conversation(image))
        logits = model(**inputs).logits
        targets = torch.randint(0, logits.shape[-1], logits.shape[:2], generator=torch.Generator().manual_seed(0))
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        assert model.model.image_tags.start.grad is not None and model.model.image_tags.start.grad.abs().sum() > 0
        return skip.grad

    grad = grad_of_skip(random_image(600, 200))
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    no_skip_grad = grad_of_skip(random_image(300, 300))
    assert no_skip_grad is None or not no_skip_grad.any()
    model.zero_grad(set_to_none=True)


def test_a_model_without_skip_tokens_refuses_a_skipping_mask():
    model, _ = make_tiny_model_and_processor(use_skip_tokens=False)
    with pytest.raises(ValueError, match="skip_padded_tiles=False"):
        model.model.get_image_features(torch.zeros(1, 3, 1024, 1024), torch.tensor([[True, True, False, False]]))
