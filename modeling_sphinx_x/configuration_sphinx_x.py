"""SPHINX-X configuration: an LLM (Llama or Mixtral layout) fed by a mixture of visual experts."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


# The SPHINX-X mixture of visual experts, used when a config names no encoder: the OpenCLIP ConvNeXt-XXLarge trunk
# (timm layout, eps 1e-5 everywhere) at 512 px and DINOv2 ViT-g/14 at 224 px.
CONVNEXT_XXLARGE = {
    "model_type": "convnext",
    "depths": [3, 4, 30, 3],
    "hidden_sizes": [384, 768, 1536, 3072],
    "layer_norm_eps": 1e-5,
    "image_size": 512,
}
DINOV2_GIANT = {
    "model_type": "dinov2",
    "hidden_size": 1536,
    "num_hidden_layers": 40,
    "num_attention_heads": 24,
    "mlp_ratio": 4,
    "use_swiglu_ffn": True,
    "image_size": 224,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
}


def convnext_grid_size(config) -> int:
    """Side of a ConvNeXt's output grid for one view: a patchify stem, then a 2x downsampling before every later
    stage."""
    return config.image_size // (config.patch_size * 2 ** (config.num_stages - 1))


@strict(accept_kwargs=True)
class SphinxXConfig(PreTrainedConfig):
    r"""
    Configuration of a SPHINX-X model (arXiv 2402.05935) and of the released SPHINX checkpoints of LLaMA2-Accessory.

    The image is laid on a canvas of `image_grid[0] * tile_size` x `image_grid[1] * tile_size` pixels. Every encoder
    sees a *global view* (the whole canvas resized to the encoder's `image_size`) and one view per tile. Per encoded
    view the language model receives `[image_start] + tokens + [image_end]`; `tokens` are the Q-Former queries (when
    a Q-Former is configured) followed by `1 + grid**2` fused grid tokens (global token first).

    Args:
        text_config (`dict` or `PreTrainedConfig`): the language model (`llama` or `mixtral`).
        convnext_config, dinov2_config, clip_config, qformer_config (`dict` or `PreTrainedConfig`, *optional*):
            the visual experts, each an HF config (`convnext`, `dinov2`, `clip_vision_model`, `blip-2`). Its
            `image_size` is the side of the views that encoder receives. At least one of ConvNeXt, DINOv2 or CLIP
            must be set; their grid features are concatenated along channels in the order CLIP | ConvNeXt | DINOv2.
            When none is given, the SPHINX-X pair ConvNeXt-XXLarge + DINOv2-g is used.
        tile_size (`int`): side of one canvas tile in pixels.
        image_grid (`list[int]`): `[rows, cols]` of tiles on the canvas.
        use_skip_tokens (`bool`): SPHINX-X skip tokens. The image keeps its aspect ratio at the top-left of the canvas;
            tiles it does not touch are not encoded and cost one learned skip embedding. When `False` (released
            checkpoints), the image is centred on a padded canvas and every tile is encoded.
        view_source (`str`): how encoders get their views. `"canvas"` (SPHINX-X, SPHINX-Tiny, SPHINX-MoE): each
            encoder resamples the canvas to its view size for the global view and cuts tiles from the canvas (or from
            the canvas resampled to `grid * view size`). `"base_views"` (the 224-px SPHINX and SPHINX-1k): views are
            the global view and the native tiles at `tile_size`, nearest-resampled for an encoder of another size.
        image_token_id (`int`): id of the `<image>` placeholder token that the processor repeats for every image
            position. Inside the LLM's vocabulary (LLaVA's convention) it embeds as its own row, and images can come
            with `inputs_embeds`; by default it is `text_config.vocab_size`, one past the vocabulary, as converted
            checkpoints have it (their tokenizer appends `<image>`, their logits keep the reference's shape); such an
            id embeds as row 0 when no image fills it. See `SphinxXModel.embed_input_ids`.
        projector_layer_norm_eps (`float`): epsilon of the LayerNorm that follows each projection.
        char_reader_config (`dict` or `PreTrainedConfig`, *optional*): a ConvNeXt (`convnext`) that names the
            character at each grid cell of a view (the embedded demo model reads printed codes with it). Its
            `num_labels` logits ("none", then one per character) feed only `reader_words` gates, not the projector.
        reader_words (`list[dict]`, *optional*): word gates on readers trained to read labels per grid cell (the
            embedded demo model). Each gate is `{"reader": "convnext" | "char_reader", "channels": [first, last],
            "token_ids": [...], "cells": "all" | "global_first" | "tiles"}`: the reader's output channels
            `first..last-1` (the ConvNeXt expert's, or the character reader's logits) are the logits of "none"
            followed by one word per token id. At every grid token (`"all"`), only at the first grid token of each
            image's global view (`"global_first"`), or at every grid token of the tile views (`"tiles"`), the fused
            token becomes `p_none * token + sum_k p_k * embedding(token_ids[k])`: where the reader reads a word, the
            LLM receives that word. Released checkpoints have none.
        place_words (`dict`, *optional*): a place reader on the ConvNeXt expert (the embedded demo model grounds
            with it): `{"hidden_size": H, "column_token_ids": [[...], ...], "row_token_ids": [[...], ...]}`, a run
            of token ids per column and per row of the image's token grid (`image_grid` tiles of `g x g` cells). A
            small convolutional head on the ConvNeXt's tile-view tokens gives each cell the probability `p` that an
            object's centre lies in it; from that cell on, in reading order within its tile, the cells become the
            words of its column, then those of its row (`(1 - p) * token + p * embedding(word)`), so that the LLM
            reads where each object is as words it can copy (the demo: the two decimals of a box's left edge, then
            of its top edge). Released checkpoints have none.
    """

    model_type = "sphinx_x"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "convnext_config": SubConfigSpec(config_class=AutoConfig, model_type="convnext", optional=True),
        "dinov2_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", optional=True),
        "clip_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
        "qformer_config": SubConfigSpec(config_class=AutoConfig, model_type="blip-2", optional=True),
        "char_reader_config": SubConfigSpec(config_class=AutoConfig, model_type="convnext", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    convnext_config: dict | PreTrainedConfig | None = None
    dinov2_config: dict | PreTrainedConfig | None = None
    clip_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    char_reader_config: dict | PreTrainedConfig | None = None
    tile_size: int = 512
    image_grid: list[int] | tuple[int, int] = (2, 2)
    use_skip_tokens: bool = True
    view_source: Literal["canvas", "base_views"] = "canvas"
    image_token_id: int | None = None
    projector_layer_norm_eps: float = 1e-5
    reader_words: list[dict] | None = None
    place_words: dict | None = None
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        model_type = config_dict.get("model_type")
        if model_type not in (None, cls.model_type):
            raise ValueError(
                f"This config.json is for model_type {model_type!r}, not {cls.model_type!r}: the folder holds another "
                "kind of model. Load it with its own class, or build a SPHINX-X from it with `sphinx-x convert`."
            )
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        if not any((self.convnext_config, self.dinov2_config, self.clip_config, self.qformer_config)):
            self.convnext_config, self.dinov2_config = dict(CONVNEXT_XXLARGE), dict(DINOV2_GIANT)
        super().__post_init__(**kwargs)
        self.image_grid = list(self.image_grid)
        if self.image_token_id is None:
            # The placeholder is appended to the tokenizer, right after the LLM's own vocabulary.
            self.image_token_id = self.text_config.vocab_size
        if not any(self.grid_encoder_configs().values()):
            raise ValueError(
                "SphinxXConfig needs at least one grid encoder: set convnext_config, dinov2_config or clip_config."
            )
        grids = {name: self.encoder_grid_size(name) for name, cfg in self.grid_encoder_configs().items() if cfg}
        other_grids = {size for name, size in grids.items() if name != "convnext"}
        if len(other_grids) > 1 or ("convnext" in grids and any(size % grids["convnext"] for size in other_grids)):
            raise ValueError(
                f"The encoders' token grids {grids} cannot be fused: CLIP and DINOv2 grids must be equal and the "
                "ConvNeXt grid must divide them. Check the encoders' image_size and patch_size."
            )
        self.check_reader_words()

    def check_reader_words(self) -> None:
        """Each `reader_words` gate reads an existing reader's channel range of "none" plus one logit per word."""
        readers = {"convnext": self.convnext_config, "char_reader": self.char_reader_config}
        for gate in self.reader_words or []:
            reader = gate.get("reader", "convnext")
            if reader not in readers or readers[reader] is None:
                raise ValueError(f"The `reader_words` gate {gate} reads {reader!r}, which this config does not have. "
                                 "Set its \"reader\" to \"convnext\" or \"char_reader\" and add that reader's config.")
            config = readers[reader]
            channels = config.num_labels if reader == "char_reader" else config.hidden_sizes[-1]
            first, last = gate["channels"]
            if not 0 <= first < last <= channels or len(gate["token_ids"]) != last - first - 1:
                raise ValueError(
                    f"The `reader_words` gate {gate} is malformed: channels [first, last] must lie within the "
                    f"{reader}'s {channels} output channels and hold 'none' plus one channel per token id. Fix the "
                    "gate's channels or token_ids."
                )
            if gate.get("cells") not in ("all", "global_first", "tiles"):
                raise ValueError(f"The `reader_words` gate {gate} needs \"cells\": \"all\", \"global_first\" or "
                                 "\"tiles\".")
        if self.place_words is not None:
            words, grid = self.place_words, self.token_grid_size
            runs = [words.get("column_token_ids") or [], words.get("row_token_ids") or []]
            if self.convnext_config is None or int(words.get("hidden_size") or 0) < 1 \
                    or [len(run) for run in runs] != [grid * self.image_grid[1], grid * self.image_grid[0]] \
                    or len({len(ids) for run in runs for ids in run}) != 1:
                raise ValueError(
                    f"place_words {words} is malformed: it needs a ConvNeXt expert, a positive \"hidden_size\", and "
                    f"a run of token ids (all of one length) per column and per row of the image's "
                    f"{grid * self.image_grid[1]}x{grid * self.image_grid[0]} token grid (columns x rows)."
                )
        if self.char_reader_config is not None:
            reader_grid = convnext_grid_size(self.char_reader_config)
            if self.token_grid_size % reader_grid:
                raise ValueError(f"The character reader's {reader_grid}x{reader_grid} grid must divide the "
                                 f"{self.token_grid_size}x{self.token_grid_size} token grid: check "
                                 "char_reader_config's image_size and patch_size.")

    def grid_encoder_configs(self) -> dict:
        """Grid encoders in channel-concatenation order (CLIP | ConvNeXt | DINOv2); `None` when absent."""
        return {"clip": self.clip_config, "convnext": self.convnext_config, "dinov2": self.dinov2_config}

    def encoder_grid_size(self, name: str) -> int:
        """Side of the token grid an encoder produces for one view."""
        cfg = self.grid_encoder_configs()[name]
        return convnext_grid_size(cfg) if name == "convnext" else cfg.image_size // cfg.patch_size

    @property
    def token_grid_size(self) -> int:
        """Side of the fused token grid (ConvNeXt maps are repeated up to it when smaller)."""
        sizes = [self.encoder_grid_size(n) for n, c in self.grid_encoder_configs().items() if c is not None]
        return max(sizes)

    @property
    def num_query_tokens(self) -> int:
        return self.qformer_config.num_query_tokens if self.qformer_config is not None else 0

    @property
    def tokens_per_view(self) -> int:
        """Image positions of one encoded view: start tag + Q-Former queries + global token + grid + end tag."""
        return 1 + self.num_query_tokens + 1 + self.token_grid_size**2 + 1

    @property
    def vision_feature_size(self) -> int:
        """Width of the fused grid features (the input of the visual projector), derived from the encoders."""
        widths = {
            "clip": lambda c: c.hidden_size,
            "convnext": lambda c: c.hidden_sizes[-1],
            "dinov2": lambda c: c.hidden_size,
        }
        return sum(widths[name](cfg) for name, cfg in self.grid_encoder_configs().items() if cfg is not None)

    @property
    def num_tiles(self) -> int:
        """Tile views besides the global view: none for a single-tile canvas (the global view is that tile)."""
        rows, cols = self.image_grid
        return rows * cols if rows * cols > 1 else 0

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(height, width) of the canvas in pixels."""
        return self.image_grid[0] * self.tile_size, self.image_grid[1] * self.tile_size


__all__ = ["SphinxXConfig"]
