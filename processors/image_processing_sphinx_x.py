"""SPHINX-X image processor (PIL + NumPy): canvas, tiles, and the skip mask of fully padded tiles."""

import functools
import io
import math
import os
import socket
import urllib.error
import urllib.request
from fractions import Fraction

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The reference pads with the CLIP mean truncated to 8 bits: (122, 116, 104).
PADDING_COLOR = tuple(int(c * 255) for c in CLIP_MEAN)
BICUBIC = PIL.Image.Resampling.BICUBIC
TRANSPOSE = PIL.Image.Transpose.TRANSPOSE
# Memory of one step of `padded_resize` (a band of rows or columns), in bytes.
RESIZE_STEP_BYTES = 16 * 2**20
# Largest image accepted: 100 megapixels and 100,000 pixels a side (checked before decoding). The canvas is computed in
# memory bounded by the image and the canvas, whatever the aspect ratio; these bound the image itself and the time.
MAX_IMAGE_PIXELS = 100_000_000
MAX_IMAGE_SIDE = 100_000
# Seconds an image URL may take to answer (connect, and between bytes); `SPHINX_X_URL_TIMEOUT` overrides it.
URL_TIMEOUT = 30.0
# Largest image download accepted, in bytes.
MAX_DOWNLOAD_BYTES = 256 * 2**20


def image_token_count(tile_mask, tokens_per_view: int) -> int:
    """Image positions of one image: every encoded view (the global one and each kept tile) costs `tokens_per_view`
    (start tag, tokens, end tag), every skipped tile one skip embedding. The model lays out exactly these positions.
    """
    kept_tiles = int(np.count_nonzero(np.asarray(tile_mask)))
    return (1 + kept_tiles) * tokens_per_view + (len(tile_mask) - kept_tiles)


def padded_frame(width: int, height: int, canvas_height: int, canvas_width: int) -> tuple[int, int]:
    """Smallest (width, height) holding the image with the canvas aspect ratio (a square for a square canvas)."""
    aspect = Fraction(canvas_width, canvas_height)
    return max(width, -(-height * aspect.numerator // aspect.denominator)), max(
        height, -(-width * aspect.denominator // aspect.numerator)
    )


def tile_content_mask(width: int, height: int, grid: list[int], tile_size: int) -> np.ndarray:
    """`[rows * cols]` bool, row-major: `True` for tiles the top-left-placed image touches.

    Decided from geometry, not pixel values: the image covers `[0, width * Wc / Wp) x [0, height * Hc / Hp)` of
    the canvas (`Wp x Hp` is the padded frame), and a tile that starts at or beyond that edge holds only padding.
    """
    rows, cols = grid
    frame_width, frame_height = padded_frame(width, height, rows * tile_size, cols * tile_size)
    content_width = Fraction(width * cols * tile_size, frame_width)
    content_height = Fraction(height * rows * tile_size, frame_height)
    return np.array(
        [r * tile_size < content_height and c * tile_size < content_width for r in range(rows) for c in range(cols)]
    )


def load_image(image, index: int = 0) -> PIL.Image.Image:
    """Open a path, bytes, PIL image, NumPy array or tensor as an upright PIL image; bad input -> `ValueError`."""
    what = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path.startswith(("http://", "https://")):
            image, what = fetch_url(path), f"{what} ({path})"
        elif not os.path.isfile(path):
            raise ValueError(
                f"{what}: no file at {path!r}. Pass an existing image path, a PIL image, bytes or an array."
            )
        else:
            with open(path, "rb") as handle:
                image, what = handle.read(), f"{what} ({path})"
    if isinstance(image, (bytes, bytearray)):
        data = image
        image = decode(lambda: PIL.Image.open(io.BytesIO(data)), what)
    elif hasattr(image, "numpy") and not isinstance(image, PIL.Image.Image):
        image = image.detach().cpu()
        if image.is_floating_point():  # bfloat16 and float16 have no NumPy type of their own
            image = image.float()
        image = image.numpy()
    if isinstance(image, np.ndarray):
        image = array_to_pil(image, what)
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"{what} has type {type(image).__name__}; pass a PIL image, a path, bytes or an array.")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"{what} is empty ({image.width}x{image.height} pixels).")
    if image.width * image.height > MAX_IMAGE_PIXELS or max(image.size) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"{what} is {image.width}x{image.height} pixels, over the limit of {MAX_IMAGE_PIXELS:,} pixels and "
            f"{MAX_IMAGE_SIDE:,} a side; downscale it first (the model sees it at the canvas size anyway)."
        )
    # A PIL image opened from a file decodes lazily: load it here (after the size check, before any pixel is
    # decoded) so that a truncated file fails as a ValueError.
    decode(image.load, what)
    return PIL.ImageOps.exif_transpose(image)


def fetch_url(url: str) -> bytes:
    """The bytes at an http(s) URL, with a timeout; a failure -> `ValueError` naming the URL and the HTTP status."""
    timeout = float(os.environ.get("SPHINX_X_URL_TIMEOUT", URL_TIMEOUT))
    request = urllib.request.Request(url, headers={"User-Agent": "sphinx-x"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise ValueError(
            f"could not fetch image {url}: HTTP {error.code} {error.reason}. "
            "Check the address, or download the image and pass its path."
        ) from None
    except (TimeoutError, socket.timeout):
        raise ValueError(
            f"could not fetch image {url}: no answer within {timeout:g} s (set SPHINX_X_URL_TIMEOUT to wait longer)."
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise ValueError(
                f"could not fetch image {url}: no answer within {timeout:g} s "
                "(set SPHINX_X_URL_TIMEOUT to wait longer)."
            ) from None
        raise ValueError(f"could not fetch image {url}: {reason}. Check the address and the network.") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ValueError(
            f"could not fetch image {url}: larger than {MAX_DOWNLOAD_BYTES // 2**20} MB; "
            "download and downscale it first."
        )
    return data


def decode(read, what: str):
    """Run a PIL opening or decoding step; corrupt, truncated or non-image data -> `ValueError`."""
    try:
        return read()
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(
            f"{what} could not be decoded ({error}). The file is corrupt, truncated or not an image; "
            "re-export it as PNG or JPEG."
        ) from None


def array_to_pil(array: np.ndarray, what: str) -> PIL.Image.Image:
    """HWC or CHW arrays with 1, 3 or 4 channels, uint8 or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
        raise ValueError(
            f"{what}: an array of shape {tuple(array.shape)} could be channels-first or channels-last; "
            "pass a PIL image, or an array with a height and width other than 1, 3 and 4."
        )
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"{what}: an array of shape {array.shape} is not an image (expected HxW, HxWxC or CxHxW).")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{what}: arrays must be uint8 or floats in [0, 1], got {array.dtype}.")
        if not np.all((array >= 0) & (array <= 1)):  # also rejects NaN
            raise ValueError(f"{what}: float arrays must hold values in [0, 1] (no NaN); scale them or pass uint8.")
        array = np.round(array * 255).astype(np.uint8)
    return PIL.Image.fromarray(array)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB with transparency composited on white and 16/32-bit greyscale scaled to 8 bits (PIL would clip it)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = PIL.Image.fromarray(np.clip(np.round(values * 255.0 / peak), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first (PIL converts La only to LA)
        image = image.convert(image.mode[:-1] + "A")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image)
    return image.convert("RGB")


def padded_resize(image: PIL.Image.Image, width: int, height: int, top_left: bool) -> PIL.Image.Image:
    """`image` (RGB) padded with `PADDING_COLOR` to the aspect ratio of `width x height` and resized to it with PIL
    bicubic: the pixels of `frame.resize((width, height), BICUBIC)` on the padded frame, without building the frame.

    PIL resizes in two passes, each rounded to 8 bits: horizontal (every row to `width` columns), then vertical (every
    column to `height` rows); Pillow >= 13 runs them the other way round when the height shrinks by more than twice
    the width, which is the same computation on the transposed image. A pass-1 pixel whose filter window holds only
    padding equals the same column of a padding-only row. So pass 1 is computed only where the image is (its rows
    when the padding is above and below; the columns whose window reaches it when the padding is at the sides) and
    pass 2 runs on bands of columns filled from it and from the padding row. Every PIL call sees the same input
    length, output length and filter centres as the one call on the frame, so the pixels are identical, and memory
    stays bounded by the image, the canvas and `RESIZE_STEP_BYTES`, whatever the aspect ratio (a 60000x10 strip would
    otherwise need a 60000x60000 frame).
    """
    frame_width, frame_height = padded_frame(image.width, image.height, height, width)
    if (
        pillow_resizes_vertically_first()
        and 0 < frame_height - height
        and 2 * (frame_width - width) < frame_height - height
    ):
        transposed = padded_resize_rows_first(image.transpose(TRANSPOSE), height, width, top_left)
        return transposed.transpose(TRANSPOSE)
    return padded_resize_rows_first(image, width, height, top_left)


@functools.cache
def pillow_resizes_vertically_first() -> bool:
    """Whether this Pillow resizes columns first when the height shrinks by more than twice the width (>= 13)."""
    probe = PIL.Image.fromarray((np.arange(100 * 100 * 3) * 7919 % 251).astype(np.uint8).reshape(100, 100, 3))
    columns_first = probe.resize((100, 40), BICUBIC).resize((120, 40), BICUBIC)
    return np.array_equal(np.asarray(probe.resize((120, 40), BICUBIC)), np.asarray(columns_first))


def padded_resize_rows_first(image: PIL.Image.Image, width: int, height: int, top_left: bool) -> PIL.Image.Image:
    """`padded_resize` with the horizontal pass first."""
    frame_width, frame_height = padded_frame(image.width, image.height, height, width)
    left, top = (0, 0) if top_left else ((frame_width - image.width) // 2, (frame_height - image.height) // 2)
    padding_row = np.asarray(PIL.Image.new("RGB", (frame_width, 1), PADDING_COLOR).resize((width, 1), BICUBIC))[0]
    if frame_width == image.width:  # padding above and below (or none): pass 1 of the image's rows, every column
        rows, columns = (top, top + image.height), (0, width)
        block = np.asarray(image.resize((width, image.height), BICUBIC))
    else:  # padding at the sides: every row, the columns whose filter window reaches the image
        rows = (0, frame_height)
        columns, block = side_padded_rows_pass(image, left, frame_width, width)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    band = max(1, RESIZE_STEP_BYTES // (8 * frame_height))
    for start in range(0, width, band):
        stop = min(start + band, width)
        strip = np.empty((frame_height, stop - start, 3), dtype=np.uint8)
        strip[:] = padding_row[start:stop]
        first, last = max(start, columns[0]), min(stop, columns[1])
        if first < last:
            strip[rows[0] : rows[1], first - start : last - start] = block[:, first - columns[0] : last - columns[0]]
        canvas[:, start:stop] = np.asarray(PIL.Image.fromarray(strip).resize((stop - start, height), BICUBIC))
    return PIL.Image.fromarray(canvas)


def side_padded_rows_pass(image, left: int, frame_width: int, width: int) -> tuple[tuple[int, int], np.ndarray]:
    """Pass 1 of `padded_resize` for an image at `left` in a frame padded at the sides: `((first, last), block)`,
    `block` `[image.height, last - first, 3]` uint8, pass-1 columns `first..last-1` (a span covering every column
    whose filter window may reach the image; all others are padding).

    PIL computes just these columns through a `box` on the slice of the frame's rows that their windows read;
    `exact_box` picks the span and slice so that PIL's scale, filter centres and windows are bit for bit the ones of
    the full-row call.
    """
    scale = frame_width / width
    support = 2.0 * max(scale, 1.0)  # bicubic reaches 2 input pixels, stretched by the downscale factor
    first = max(0, math.floor((left - support - 1) / scale - 0.5))
    last = min(width, math.ceil((left + image.width + support + 1) / scale))
    first, last, offset, box_start, box_end = exact_box(first, last, frame_width, width)
    cut = min(frame_width, int(box_end + offset + support) + 3)  # frame columns offset..cut-1 hold every window
    rows_per_step = max(1, RESIZE_STEP_BYTES // (8 * (cut - offset)))
    block = np.empty((image.height, last - first, 3), dtype=np.uint8)
    inside = (max(left, offset), min(left + image.width, cut))  # frame columns of the image inside the slice
    for top in range(0, image.height, rows_per_step):
        bottom = min(top + rows_per_step, image.height)
        rows = np.empty((bottom - top, cut - offset, 3), dtype=np.uint8)
        rows[:] = PADDING_COLOR
        if inside[0] < inside[1]:
            pixels = image.crop((inside[0] - left, top, inside[1] - left, bottom))
            rows[:, inside[0] - offset : inside[1] - offset] = np.asarray(pixels)
        box = (box_start, 0, box_end, bottom - top)
        block[top:bottom] = np.asarray(PIL.Image.fromarray(rows).resize((last - first, bottom - top), BICUBIC, box=box))
    return (first, last), block


def exact_box(first: int, last: int, frame_width: int, width: int) -> tuple[int, int, int, float, float]:
    """For outputs `first..last-1` of a row resize from `frame_width` to `width` columns: a span `start..stop-1`
    holding them, the first frame column `offset` of a slice holding every window, and the box `(box_start, box_end)`
    on that slice with which PIL computes exactly the span's outputs of the full-row call.

    PIL takes the box as float32 and computes `scale = (double)(box_end - box_start) / outputs`, filter centres
    `box_start + (i + 0.5) * scale` and windows `(int)(centre -/+ support + 0.5)`; the full-row call has
    `scale = frame_width / width` and centres `(i + 0.5) * scale`. The span is widened (at most 64 columns each side,
    else the full row) until scale, centres (shifted by `offset`) and windows agree to the last bit; the filter weights
    follow from them.
    """
    scale = frame_width / width
    support = 2.0 * max(scale, 1.0)
    for widening in range(129):
        for left_widening in range(max(0, widening - 64), min(widening, 64) + 1):
            start, stop = first - left_widening, last + widening - left_widening
            if start < 0 or stop > width:
                continue
            centres = (np.arange(start, stop) + 0.5) * scale
            offset = max(0, int(centres[0] - support + 0.5))
            box_start, box_end = np.float32(start * scale - offset), np.float32(stop * scale - offset)
            if box_start != start * scale - offset or box_end != stop * scale - offset:
                continue
            box_scale = float(box_end - box_start) / (stop - start)
            shifted = float(box_start) + (np.arange(stop - start) + 0.5) * box_scale
            if (
                box_scale == scale
                and np.array_equal(shifted, centres - offset)
                and np.array_equal(np.trunc(shifted - support + 0.5), np.trunc(centres - support + 0.5) - offset)
                and np.array_equal(np.trunc(shifted + support + 0.5), np.trunc(centres + support + 0.5) - offset)
            ):
                return start, stop, offset, float(box_start), float(box_end)
    return 0, width, 0, 0.0, float(frame_width)


class SphinxXImageProcessor(BaseImageProcessor):
    r"""
    Lays each image on the SPHINX canvas and normalises it with the CLIP statistics.

    The image is padded with `(122, 116, 104)` to the canvas aspect ratio and resized with PIL bicubic to the canvas
    (`image_grid * tile_size`). Released SPHINX checkpoints (`skip_padded_tiles=False`) centre the image, exactly as
    LLaMA2-Accessory's `padded_resize`. SPHINX-X (`skip_padded_tiles=True`) places it at the top-left so the padding
    gathers in whole tiles, which `image_tile_mask` marks for the model to skip.

    Args:
        tile_size (`int`): side of one tile in pixels.
        image_grid (`list[int]`): `[rows, cols]` of tiles.
        skip_padded_tiles (`bool`): top-left placement and a skip mask, instead of centring and encoding all tiles.
        tokens_per_view (`int`): image positions of one encoded view (`SphinxXConfig.tokens_per_view`).

    Outputs `pixel_values` `[N, 3, rows * tile_size, cols * tile_size]` float32 and `image_tile_mask`
    `[N, num_tiles]` bool (`True` = encode the tile; a 1x1 grid has no tiles besides the global view).
    """

    model_input_names = ["pixel_values", "image_tile_mask"]

    def __init__(
        self,
        tile_size: int = 512,
        image_grid: list[int] = (2, 2),
        skip_padded_tiles: bool = True,
        tokens_per_view: int = 259,
        image_mean: list[float] = CLIP_MEAN,
        image_std: list[float] = CLIP_STD,
        **kwargs,
    ):
        # `auto_map` in a saved config tells the Auto classes where the remote code is; it is no setting of this object
        # (`save_pretrained` writes it again), so a reloaded image processor equals the one that was saved.
        kwargs.pop("auto_map", None)
        super().__init__(**kwargs)
        self.tile_size = tile_size
        self.image_grid = list(image_grid)
        self.skip_padded_tiles = skip_padded_tiles
        self.tokens_per_view = tokens_per_view
        # Kept as attributes for tools that read them; not settable: the DINOv2 expert re-normalises from these
        # statistics and the padding colour is their mean, so other values would silently give the wrong inputs.
        if not (np.allclose(image_mean, CLIP_MEAN) and np.allclose(image_std, CLIP_STD)):
            raise ValueError(
                f"SPHINX-X normalises images with CLIP's statistics (mean {CLIP_MEAN}, std {CLIP_STD}); got mean "
                f"{list(image_mean)}, std {list(image_std)}. Remove image_mean / image_std from the processor config."
            )
        self.image_mean = list(CLIP_MEAN)
        self.image_std = list(CLIP_STD)

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "SphinxXImageProcessor":
        """The image processor matching a `SphinxXConfig`: its canvas, skip mode and tokens per view."""
        return cls(
            tile_size=config.tile_size,
            image_grid=config.image_grid,
            skip_padded_tiles=config.use_skip_tokens,
            tokens_per_view=config.tokens_per_view,
            **kwargs,
        )

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(height, width) of the canvas."""
        return self.image_grid[0] * self.tile_size, self.image_grid[1] * self.tile_size

    @property
    def num_tiles(self) -> int:
        """Tile views besides the global view: none for a single-tile canvas (the global view is that tile)."""
        rows, cols = self.image_grid
        return rows * cols if rows * cols > 1 else 0

    def fetch_images(self, images):
        if isinstance(images, (list, tuple)):
            return [self.fetch_images(image) for image in images]
        return load_image(images)

    def num_image_tokens(self, tile_mask) -> int:
        """Image placeholder tokens the processor writes for an image with this tile mask."""
        return image_token_count(tile_mask, self.tokens_per_view)

    def tile_mask(self, width: int, height: int) -> np.ndarray:
        """`[num_tiles]` bool for an image of this size: all `True` unless `skip_padded_tiles`."""
        if not self.skip_padded_tiles or not self.num_tiles:
            return np.ones(self.num_tiles, dtype=bool)
        return tile_content_mask(width, height, self.image_grid, self.tile_size)

    def to_canvas(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """Pad to the canvas aspect ratio (centred, or top-left with skipping) and resize with PIL bicubic."""
        canvas_height, canvas_width = self.canvas_size
        return padded_resize(image, canvas_width, canvas_height, top_left=self.skip_padded_tiles)

    def normalize_canvas(self, canvas: PIL.Image.Image) -> np.ndarray:
        """uint8 HWC -> float32 CHW, `(x / 255 - mean) / std` in float32 like torchvision's ToTensor + Normalize."""
        pixels = np.asarray(canvas, dtype=np.float32) / np.float32(255)
        pixels = (pixels - np.asarray(self.image_mean, dtype=np.float32)) / np.asarray(self.image_std, dtype=np.float32)
        return pixels.transpose(2, 0, 1)

    def preprocess(self, images, return_tensors=None, **kwargs) -> BatchFeature:
        """Images (one, a list, or a list of lists per prompt) -> `pixel_values` and `image_tile_mask`."""
        flat = []

        def flatten(item):
            if isinstance(item, (list, tuple)):
                for sub in item:
                    flatten(sub)
            else:
                flat.append(item)

        flatten(images)
        pixel_values, tile_masks = [], []
        for index, image in enumerate(flat):
            image = to_rgb(load_image(image, index))
            tile_masks.append(self.tile_mask(image.width, image.height))
            pixel_values.append(self.normalize_canvas(self.to_canvas(image)))
        data = {
            "pixel_values": np.stack(pixel_values) if flat else np.zeros((0, 3, *self.canvas_size), np.float32),
            "image_tile_mask": np.stack(tile_masks) if flat else np.zeros((0, self.num_tiles), bool),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["SphinxXImageProcessor", "image_token_count"]
