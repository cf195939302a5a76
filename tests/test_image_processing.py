"""SphinxXImageProcessor: pixel parity with the reference, input forms, bad input, extreme sizes, modes, EXIF, and
the processor's `<image>` placeholder accounting."""

import io

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from sphinx_x import SphinxXImageProcessor
from sphinx_x.processors.image_processing_sphinx_x import (
    CLIP_MEAN,
    CLIP_STD,
    PADDING_COLOR,
    padded_frame,
    padded_resize,
    to_rgb,
)


T, F = True, False


@pytest.fixture(scope="module")
def released():
    """Reference geometry of released checkpoints: centred image, every tile encoded."""
    return SphinxXImageProcessor(skip_padded_tiles=False)


@pytest.fixture(scope="module")
def skipping():
    """SPHINX-X geometry: image at the top-left, fully padded tiles masked out."""
    return SphinxXImageProcessor(skip_padded_tiles=True)


def normalised(rgb) -> np.ndarray:
    """One 8-bit colour as the processor normalises it (float32, like ToTensor + Normalize)."""
    value = np.asarray(rgb, dtype=np.float32) / np.float32(255)
    return (value - np.asarray(CLIP_MEAN, dtype=np.float32)) / np.asarray(CLIP_STD, dtype=np.float32)


def pixels(processor, image) -> np.ndarray:
    return processor(image)["pixel_values"][0]


def mask(processor, image) -> list[bool]:
    return processor(image)["image_tile_mask"][0].tolist()


def random_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(image: PIL.Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


# 1. Pixel parity with the original preprocessing, for every input form.


def test_pixel_parity_with_reference_for_every_input_form(released, fixture_dir):
    path = fixture_dir / "inputs" / "synthetic_640x320.png"
    reference = np.load(fixture_dir / "inputs" / "pixel_values_1024.npz")["pixel_values"]
    assert reference.shape == (3, 1024, 1024)
    with PIL.Image.open(path) as opened:
        pil_image = opened.copy()
    forms = {
        "str path": str(path),
        "Path": path,
        "bytes": path.read_bytes(),
        "PIL": pil_image,
        "uint8 HWC array": np.asarray(pil_image.convert("RGB")),
    }
    for form, image in forms.items():
        out = released(image)
        assert out["pixel_values"].shape == (1, 3, 1024, 1024), form
        assert out["pixel_values"].dtype == np.float32, form
        np.testing.assert_allclose(out["pixel_values"][0], reference, rtol=0, atol=1e-5, err_msg=form)
        assert out["image_tile_mask"].tolist() == [[T, T, T, T]], form


# 2. Bad input: always a ValueError that names the problem.


def test_corrupt_bytes(released):
    with pytest.raises(ValueError, match="could not be decoded.*corrupt, truncated or not an image"):
        released(np.random.default_rng(0).bytes(4096))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(released, fixture_dir, tmp_path, fmt):
    with PIL.Image.open(fixture_dir / "inputs" / "synthetic_640x320.png") as image:
        data = encoded(image.convert("RGB"), fmt)
    half = data[: len(data) // 2]
    with pytest.raises(ValueError, match="could not be decoded.*truncated"):
        released(half)
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(half)
    with pytest.raises(ValueError, match=r"half\.\w+\) could not be decoded"):
        released(str(path))
    # A PIL image opened lazily from the truncated file fails when decoded, still as a ValueError.
    with pytest.raises(ValueError, match="could not be decoded.*truncated"):
        released(PIL.Image.open(io.BytesIO(half)))


def test_missing_path(released, tmp_path):
    missing = tmp_path / "no_such_image.png"
    with pytest.raises(ValueError, match="no file at.*no_such_image.png"):
        released(str(missing))
    with pytest.raises(ValueError, match="no file at"):
        released(missing)


@pytest.mark.parametrize("bad", [3, 2.5, None, object(), {"image": 1}], ids=["int", "float", "None", "object", "dict"])
def test_unsupported_object(released, bad):
    with pytest.raises(ValueError, match=rf"has type {type(bad).__name__}; pass a PIL image"):
        released(bad)


@pytest.mark.parametrize("shape", [(5,), (10, 10, 2), (10, 10, 5), (1, 8, 8, 3), (2, 3, 8, 8)])
def test_array_of_wrong_shape(released, shape):
    with pytest.raises(ValueError, match=r"array of shape .* is not an image"):
        released(np.zeros(shape, dtype=np.uint8))


def test_array_of_wrong_values(released):
    with pytest.raises(ValueError, match="uint8 or floats in \\[0, 1\\], got int64"):
        released(np.zeros((8, 8, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        released(np.full((8, 8, 3), 2.0, dtype=np.float32))
    nan = np.zeros((8, 8, 3), dtype=np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        released(nan)


def test_empty_image(released):
    with pytest.raises(ValueError, match="empty"):
        released(np.zeros((0, 0, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        released(PIL.Image.new("RGB", (0, 5)))


def test_float_array_in_unit_range_equals_uint8(released):
    array = random_rgb(40, 30)
    np.testing.assert_array_equal(pixels(released, array.astype(np.float32) / 255), pixels(released, array))
    # CHW arrays are accepted too.
    np.testing.assert_array_equal(pixels(released, array.transpose(2, 0, 1)), pixels(released, array))


# 3. Extreme sizes and the geometric skip mask.


@pytest.mark.parametrize(
    ("size", "expected_mask"),
    [((1, 1), [T, T, T, T]), ((1, 4000), [T, F, T, F]), ((4000, 1), [T, T, F, F])],
    ids=["1x1", "1x4000 tall", "4000x1 wide"],
)
def test_extreme_sizes(released, skipping, size, expected_mask):
    image = PIL.Image.new("RGB", size, (200, 30, 60))
    for processor in (released, skipping):
        out = processor(image)
        assert out["pixel_values"].shape == (1, 3, 1024, 1024)
        assert np.isfinite(out["pixel_values"]).all()
    assert mask(released, image) == [T, T, T, T]
    assert mask(skipping, image) == expected_mask


@pytest.mark.parametrize(
    ("size", "expected_mask"),
    [
        ((300, 100), [T, T, F, F]),  # 3:1 wide: bottom row is padding
        ((100, 300), [T, F, T, F]),  # 1:3 tall: right column is padding
        ((200, 200), [T, T, T, T]),  # square: no padding
        ((200, 100), [T, T, F, F]),  # exactly 2:1: the image ends exactly at the bottom row
        ((100, 200), [T, F, T, F]),
        ((199, 100), [T, T, T, T]),  # just under 2:1: the image reaches into the bottom row
        ((640, 320), [T, T, F, F]),
    ],
)
def test_skip_mask_is_geometric(skipping, size, expected_mask):
    assert mask(skipping, PIL.Image.new("RGB", size, (10, 20, 30))) == expected_mask
    assert skipping.tile_mask(*size).tolist() == expected_mask


def test_skipped_tiles_hold_only_padding_and_image_sits_top_left(released, skipping):
    colour = (230, 20, 40)
    image = PIL.Image.new("RGB", (300, 100), colour)
    canvas = pixels(skipping, image)  # image covers rows [0, 341.3) of the 1024 canvas
    padding = normalised(PADDING_COLOR)[:, None, None]
    np.testing.assert_allclose(canvas[:, 512:, :], np.broadcast_to(padding, (3, 512, 1024)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(canvas[:, 360:, :], np.broadcast_to(padding, (3, 664, 1024)), rtol=0, atol=1e-6)
    inside = normalised(colour)[:, None, None]
    np.testing.assert_allclose(canvas[:, :330, :], np.broadcast_to(inside, (3, 330, 1024)), rtol=0, atol=1e-6)
    # Released mode centres the same image: padding above and below, the image in the middle band.
    centred = pixels(released, image)
    np.testing.assert_allclose(centred[:, :330, :], np.broadcast_to(padding, (3, 330, 1024)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(centred[:, 350:670, :], np.broadcast_to(inside, (3, 320, 1024)), rtol=0, atol=1e-6)


def padded_frame_resize(image, width, height, top_left):
    """The reference computation: pad to a full frame with the canvas aspect ratio, then one PIL bicubic resize."""
    frame_width, frame_height = padded_frame(image.width, image.height, height, width)
    frame = PIL.Image.new("RGB", (frame_width, frame_height), PADDING_COLOR)
    offset = (0, 0) if top_left else ((frame_width - image.width) // 2, (frame_height - image.height) // 2)
    frame.paste(image, offset)
    return frame.resize((width, height), PIL.Image.BICUBIC)


@pytest.mark.parametrize("top_left", [True, False], ids=["top-left", "centred"])
@pytest.mark.parametrize(
    "canvas", [(1024, 1024), (112, 112), (896, 448), (224, 672), (201, 100), (100, 201)], ids=lambda c: "%dx%d" % c
)
@pytest.mark.parametrize(
    "size",
    [(640, 320), (320, 640), (7, 2000), (2000, 7), (1, 1), (3, 5), (1023, 1000), (13, 3001), (3001, 13)],
    ids=lambda s: "%dx%d" % s,
)
def test_banded_canvas_equals_padded_frame_resize(size, canvas, top_left):
    """The canvas computed in bands is pixel for pixel PIL's resize of the padded frame: wide and tall images, up- and
    downscaling, square and oblong canvases (224x672 is resized columns first by Pillow >= 13)."""
    image = PIL.Image.fromarray(random_rgb(*size, seed=size[0] * 7 + size[1]))
    expected = np.asarray(padded_frame_resize(image, *canvas, top_left))
    np.testing.assert_array_equal(np.asarray(padded_resize(image, *canvas, top_left)), expected)


# 4. Colour modes, compared with the equivalent 8-bit RGB image.


def test_rgba_transparent_is_white_and_opaque_equals_rgb(released):
    rgb = random_rgb(64, 64)
    white = normalised((255, 255, 255))[:, None, None]
    transparent = np.dstack([rgb, np.zeros((64, 64), np.uint8)])
    np.testing.assert_allclose(
        pixels(released, PIL.Image.fromarray(transparent, "RGBA")),
        np.broadcast_to(white, (3, 1024, 1024)),
        rtol=0,
        atol=1e-6,
    )
    opaque = np.dstack([rgb, np.full((64, 64), 255, np.uint8)])
    np.testing.assert_array_equal(pixels(released, PIL.Image.fromarray(opaque, "RGBA")), pixels(released, rgb))
    # RGBA arrays go the same way as RGBA images.
    np.testing.assert_array_equal(pixels(released, opaque), pixels(released, rgb))


def test_rgba_half_transparent_is_composited_on_white():
    image = PIL.Image.new("RGBA", (4, 4), (0, 100, 200, 128))
    expected = [round(c * 128 / 255 + 255 * 127 / 255) for c in (0, 100, 200)]
    np.testing.assert_allclose(np.asarray(to_rgb(image))[0, 0], expected, atol=1)


def test_la(released):
    grey = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    grey_rgb = np.repeat(grey[..., None], 3, axis=-1)
    opaque = PIL.Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA")
    np.testing.assert_array_equal(pixels(released, opaque), pixels(released, grey_rgb))
    transparent = PIL.Image.fromarray(np.dstack([grey, np.zeros_like(grey)]), "LA")
    np.testing.assert_array_equal(pixels(released, transparent), pixels(released, np.full_like(grey_rgb, 255)))


def test_premultiplied_alpha_modes():
    la = PIL.Image.new("LA", (4, 4), (100, 255)).convert("La")
    assert np.asarray(to_rgb(la))[0, 0].tolist() == [100, 100, 100]
    rgba = PIL.Image.new("RGBA", (4, 4), (10, 20, 30, 0)).convert("RGBa")
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]


def test_palette_with_and_without_transparency(released):
    palette_colours = [(255, 0, 0), (0, 128, 0), (0, 0, 255), (12, 34, 56)]
    indices = np.random.default_rng(2).integers(0, 4, (64, 64), dtype=np.uint8)
    image = PIL.Image.fromarray(indices, "P")
    image.putpalette([c for colour in palette_colours for c in colour])
    as_rgb = np.asarray(palette_colours, dtype=np.uint8)[indices]
    assert "transparency" not in image.info
    np.testing.assert_array_equal(pixels(released, image), pixels(released, as_rgb))
    # Index 2 transparent (also through a PNG round trip, which stores it as a tRNS chunk): blue becomes white.
    image.info["transparency"] = 2
    with_white = as_rgb.copy()
    with_white[indices == 2] = 255
    np.testing.assert_array_equal(pixels(released, image), pixels(released, with_white))
    png = encoded(image, "PNG", transparency=2)
    assert PIL.Image.open(io.BytesIO(png)).mode == "P"
    np.testing.assert_array_equal(pixels(released, png), pixels(released, with_white))


def test_greyscale_l_equals_rgb_grey(released):
    grey = np.random.default_rng(3).integers(0, 256, (48, 96), dtype=np.uint8)
    grey_rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_array_equal(pixels(released, PIL.Image.fromarray(grey, "L")), pixels(released, grey_rgb))
    np.testing.assert_array_equal(pixels(released, grey), pixels(released, grey_rgb))  # HxW array
    np.testing.assert_array_equal(pixels(released, grey[..., None]), pixels(released, grey_rgb))  # HxWx1 array


def test_cmyk_equals_pil_conversion(released):
    cmyk = PIL.Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 4), dtype=np.uint8), "CMYK")
    expected = pixels(released, np.asarray(cmyk.convert("RGB")))
    np.testing.assert_array_equal(pixels(released, cmyk), expected)
    # A CMYK JPEG: the same as PIL's conversion of the decoded file.
    jpeg = encoded(cmyk, "JPEG", quality=95)
    with PIL.Image.open(io.BytesIO(jpeg)) as decoded:
        assert decoded.mode == "CMYK"
        expected = pixels(released, np.asarray(decoded.convert("RGB")))
    np.testing.assert_array_equal(pixels(released, jpeg), expected)


def test_16_bit_greyscale_is_scaled_not_clipped(released):
    values16 = np.array([[65535, 0, 32896, 257], [32896, 65535, 0, 514]], dtype=np.uint16)
    values8 = np.array([[255, 0, 128, 1], [128, 255, 0, 2]], dtype=np.uint8)
    image = PIL.Image.frombytes("I;16", (4, 2), values16.astype("<u2").tobytes())
    assert image.mode == "I;16"
    assert np.asarray(to_rgb(image))[..., 0].tolist() == values8.tolist()
    expected = pixels(released, np.repeat(values8[..., None], 3, axis=-1))
    np.testing.assert_array_equal(pixels(released, image), expected)
    # A 16-bit greyscale PNG decodes to the same result.
    np.testing.assert_array_equal(pixels(released, encoded(image, "PNG")), expected)


# 5. EXIF orientation.


@pytest.mark.parametrize(("orientation", "rotate_k"), [(6, -1), (8, 1)])
def test_exif_rotated_jpeg_is_upright(skipping, tmp_path, orientation, rotate_k):
    # A 300x100 landscape with a distinct left end, stored with an orientation tag that displays it 100x300.
    stored = np.zeros((100, 300, 3), dtype=np.uint8)
    stored[:, :100] = (250, 10, 10)
    stored[:, 100:] = (10, 10, 250)
    exif = PIL.Image.Exif()
    exif[274] = orientation
    data = encoded(PIL.Image.fromarray(stored), "JPEG", exif=exif, quality=95)
    with PIL.Image.open(io.BytesIO(data)) as raw:
        assert raw.size == (300, 100) and raw.getexif()[274] == orientation
        decoded = np.asarray(raw.convert("RGB"))
    # Orientation 6 is displayed turned clockwise, 8 counter-clockwise.
    upright = np.ascontiguousarray(np.rot90(decoded, k=rotate_k))
    assert upright.shape == (300, 100, 3)
    with PIL.Image.open(io.BytesIO(data)) as raw:
        np.testing.assert_array_equal(np.asarray(PIL.ImageOps.exif_transpose(raw).convert("RGB")), upright)
    expected = pixels(skipping, upright)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    for image in (data, str(path), PIL.Image.open(io.BytesIO(data))):
        out = skipping(image)
        assert out["image_tile_mask"][0].tolist() == [T, F, T, F]
        np.testing.assert_array_equal(out["pixel_values"][0], expected)
    # The red end of the landscape is at the top (orientation 6) or the bottom (orientation 8) of the portrait.
    red_top = pixels(skipping, data)[0, 20, 100] > pixels(skipping, data)[0, 650, 100]
    assert red_top == (orientation == 6)


# 6. Processor: `<image>` placeholders and their expansion.


def test_placeholder_count_mismatch(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    image = PIL.Image.new("RGB", (300, 100), (10, 200, 30))
    with pytest.raises(ValueError, match=r"one image per prompt; got 1 images for 1 prompts \(2 `<image>` markers\)"):
        processor(text="<image><image> Describe.", images=[image])
    with pytest.raises(ValueError, match=r"one image per prompt; got 2 images for 1 prompts"):
        processor(text="<image> Describe.", images=[image, image])
    with pytest.raises(ValueError, match=r"one image per prompt; got 2 images for 1 prompts \(0 `<image>` markers\)"):
        processor(text="Describe.", images=[image, image])
    with pytest.raises(ValueError, match=r"holds 1 `<image>` \(per prompt: \[1\]\) but 0 images.*your own text"):
        processor(text="<image> Describe.")
    with pytest.raises(ValueError, match=r"the text holds 1 `<image>` \(per prompt: \[1, 0\]\) but 2 images"):
        processor(text=["<image> Describe.", "Describe."], images=[image, image])


def test_text_without_placeholder_gets_the_image_in_front(tiny_model_and_processor):
    """`pipe(images=image, text="...")`, as LLaVA users write it: the image block goes right after BOS."""
    _, processor = tiny_model_and_processor
    image = PIL.Image.new("RGB", (300, 100), (10, 200, 30))
    explicit = processor(text="<image> Describe.", images=[image])
    implicit = processor(text=" Describe.", images=image)
    assert implicit["input_ids"] == explicit["input_ids"]
    assert explicit["input_ids"][0][:2] == [processor.tokenizer.bos_token_id, processor.image_token_id]
    batch = processor(text=[" Describe.", " Describe."], images=[image, image], padding=True)
    assert batch["input_ids"] == explicit["input_ids"] * 2


@pytest.mark.parametrize(
    ("size", "expected_tokens"), [((300, 100), 3 * 259 + 2), ((100, 300), 3 * 259 + 2), ((256, 256), 5 * 259)]
)
def test_placeholder_expansion(tiny_model_and_processor, size, expected_tokens):
    _, processor = tiny_model_and_processor
    out = processor(
        text="<image> Describe the image.", images=[PIL.Image.new("RGB", size, (10, 200, 30))], return_tensors="pt"
    )
    mask_ = out["image_tile_mask"][0]
    assert processor.image_processor.num_image_tokens(mask_) == expected_tokens
    ids = out["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == expected_tokens
    # One contiguous run: the placeholders replace the single `<image>` in place.
    positions = (ids == processor.image_token_id).nonzero().flatten()
    assert int(positions[-1] - positions[0]) + 1 == expected_tokens
    assert out["pixel_values"].shape == (1, 3, 1024, 1024)


def test_normalisation_other_than_clip_is_refused(released, tmp_path):
    # The DINOv2 expert re-normalises from CLIP's statistics: another mean would silently feed it wrong pixels.
    released.save_pretrained(tmp_path)
    assert SphinxXImageProcessor.from_pretrained(tmp_path).image_mean == released.image_mean
    with pytest.raises(ValueError, match="CLIP's statistics.*Remove image_mean"):
        SphinxXImageProcessor.from_pretrained(tmp_path, image_mean=[0.5, 0.5, 0.5])
