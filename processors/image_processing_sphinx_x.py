"""SPHINX-X image processor (PIL + NumPy): canvas, tiles, and the skip mask of fully padded tiles."""

import io
import os
from fractions import Fraction

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The reference pads with the CLIP mean truncated to 8 bits: (122, 116, 104).
PADDING_COLOR = tuple(int(c * 255) for c in CLIP_MEAN)


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
            from transformers.image_utils import load_image as fetch_url

            return PIL.ImageOps.exif_transpose(fetch_url(path))
        if not os.path.isfile(path):
            raise ValueError(
                f"{what}: no file at {path!r}. Pass an existing image path, a PIL image, bytes or an array."
            )
        with open(path, "rb") as handle:
            image, what = handle.read(), f"{what} ({path})"
    if isinstance(image, (bytes, bytearray)):
        data = image
        image = decode(lambda: PIL.Image.open(io.BytesIO(data)), what)
    elif hasattr(image, "numpy") and not isinstance(image, PIL.Image.Image):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        image = array_to_pil(image, what)
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"{what} has type {type(image).__name__}; pass a PIL image, a path, bytes or an array.")
    # A PIL image opened from a file decodes lazily: load it here so that a truncated file fails as a ValueError.
    decode(image.load, what)
    if image.width < 1 or image.height < 1:
        raise ValueError(f"{what} is empty ({image.width}x{image.height} pixels).")
    return PIL.ImageOps.exif_transpose(image)


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
        frame_width, frame_height = padded_frame(image.width, image.height, canvas_height, canvas_width)
        if (frame_width, frame_height) != image.size:
            frame = PIL.Image.new(image.mode, (frame_width, frame_height), PADDING_COLOR)
            offset = (
                (0, 0)
                if self.skip_padded_tiles
                else ((frame_width - image.width) // 2, (frame_height - image.height) // 2)
            )
            frame.paste(image, offset)
            image = frame
        return image.resize((canvas_width, canvas_height), PIL.Image.BICUBIC)

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
