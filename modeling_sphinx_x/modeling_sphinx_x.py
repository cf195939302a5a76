"""SPHINX-X: a mixture of visual experts (CLIP / ConvNeXt / DINOv2 / BLIP-2 Q-Former) feeding a Llama or Mixtral LLM.

Faithful to LLaMA2-Accessory's SPHINX models (`llama_ens*`, `mixtral_sparse_ens*`) and adds the SPHINX-X skip tokens:
canvas tiles that the image does not touch are not encoded and cost one learned embedding each.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModel,
    Blip2QFormerModel,
    Blip2VisionModel,
    CLIPVisionModel,
    ConvNextModel,
    Dinov2Model,
    GenerationMixin,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    MultimodalMoeBaseModelOutputWithPast,
    MultimodalMoeCausalLMOutputWithPast,
)
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .configuration_sphinx_x import SphinxXConfig


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINOV2_MEAN = (0.485, 0.456, 0.406)
DINOV2_STD = (0.229, 0.224, 0.225)


def resample_like_reference(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize as the reference vision path does: in float16, without antialiasing, then back to the input dtype.

    images: `[N, 3, H, W]` -> `[N, 3, size[0], size[1]]`.
    """
    align_corners = None if mode == "nearest" else False
    return F.interpolate(images.half(), size=size, mode=mode, align_corners=align_corners).to(images.dtype)


def build_views(canvas: torch.Tensor, view_size: int, grid: list[int], tile_size: int, view_mask: torch.Tensor):
    """Cut the encoder views of every image out of its canvas, in the reference order `[global, tiles row-major]`.

    Args:
        canvas: `[B, 3, rows * tile_size, cols * tile_size]` normalised pixels.
        view_size: side of the square views the encoder expects.
        grid: `[rows, cols]`.
        tile_size: side of a canvas tile in pixels.
        view_mask: `[B, 1 + num_tiles]` bool, `True` for the views to encode (the global view always is); a 1x1
            grid has no tile views.

    Returns:
        `[view_mask.sum(), 3, view_size, view_size]`, image-major.
    """
    rows, cols = grid
    global_view = resample_like_reference(canvas, (view_size, view_size))[:, None]
    if rows * cols == 1:
        return global_view[view_mask[:, :1]]
    # Tiles come straight from the canvas when they already have the view size; otherwise the whole canvas is
    # resampled to the grid of views first (reference: quadrants of the 448 image for the 224 DINOv2 views).
    tiled = canvas if tile_size == view_size else resample_like_reference(canvas, (rows * view_size, cols * view_size))
    batch, channels = tiled.shape[:2]
    tiles = (
        tiled.reshape(batch, channels, rows, view_size, cols, view_size)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(batch, rows * cols, channels, view_size, view_size)
    )
    return torch.cat([global_view, tiles], dim=1)[view_mask]


def check_model_inputs(config, vocab_size: int, input_ids=None, pixel_values=None, image_tile_mask=None) -> None:
    """Refuse inputs the model would misread, with the shape or value at fault: `pixel_values` `[B, 3, H, W]` finite
    floats at the canvas size, `image_tile_mask` `[B, num_tiles]`, `input_ids` within the vocabulary (or the image
    placeholder id). The value checks are left out of compiled graphs (they would break them): compiled decoding
    follows an eager prefill that made them."""
    if pixel_values is not None:
        height, width = config.canvas_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, height, width):
            raise ValueError(
                f"`pixel_values` must be [batch, 3, {height}, {width}] (this model's canvas), got "
                f"{list(pixel_values.shape)}. Build them with the model's SphinxXImageProcessor."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"`pixel_values` must be floats (normalised canvases), got {pixel_values.dtype}.")
        if not torch.compiler.is_compiling() and not torch.isfinite(pixel_values).all():
            raise ValueError("`pixel_values` hold NaN or infinite values; check the images and their preprocessing.")
        if image_tile_mask is not None:
            expected = (pixel_values.shape[0], config.num_tiles)
            if tuple(image_tile_mask.shape) != expected:
                raise ValueError(
                    f"`image_tile_mask` must be [batch, num_tiles] = {list(expected)} for these `pixel_values`, got "
                    f"{list(image_tile_mask.shape)}. Pass the mask the image processor returned with them."
                )
    if input_ids is not None and input_ids.numel() and not torch.compiler.is_compiling():
        outside = ((input_ids < 0) | (input_ids >= vocab_size)) & (input_ids != config.image_token_id)
        if outside.any():
            bad = input_ids[outside][0].item()
            raise ValueError(
                f"`input_ids` hold id {bad}, outside the vocabulary (0..{vocab_size - 1}, and the image placeholder "
                f"{config.image_token_id}). Tokenize with the model's own tokenizer."
            )


def check_prompt_length(text_config, length: int) -> None:
    """Refuse a prompt longer than the LLM's context (`generate`; a bare forward extrapolates, as transformers' models
    do). RoPE scaling (linear, dynamic, YaRN, ...) extends the context past `max_position_embeddings`: not checked."""
    context = getattr(text_config, "max_position_embeddings", None)
    rope = getattr(text_config, "rope_parameters", None) or {}
    if context is not None and rope.get("rope_type", "default") == "default" and length > context:
        raise ValueError(
            f"The prompt is {length} tokens long, over this model's context of {context} tokens (images count too: "
            "each takes its image positions). Shorten the text, use fewer images, or truncate it yourself (e.g. "
            "`processor(..., truncation=True, max_length=...)` on text-only prompts)."
        )


class SphinxXConvNextEncoder(nn.Module):
    """OpenCLIP ConvNeXt trunk (timm layout) on HF `ConvNextModel`: last stage + per-position head norm + mean token."""

    def __init__(self, config, token_grid_size: int):
        super().__init__()
        # ConvNeXt has no attention layer, so a model-wide backend does not concern it, but transformers refuses to
        # build it under any but eager: build it so, and keep the config's (model-wide) value.
        requested, config._attn_implementation_internal = config._attn_implementation_internal, "eager"
        self.model = ConvNextModel(config)
        config._attn_implementation_internal = requested
        # HF hard-codes eps 1e-6 in the ConvNeXt blocks; timm/OpenCLIP uses the config's value everywhere.
        for module in self.model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = config.layer_norm_eps
        self.token_grid_size = token_grid_size

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutput:
        """`[N, 3, S, S]` -> `last_hidden_state` `[N, 1 + g*g, C]`: the spatial mean token, then the row-major grid.
        ConvNeXt has no attentions and records no hidden states."""
        feature_map = self.model.encoder(self.model.embeddings(pixel_values)).last_hidden_state
        # timm's `head.norm` is HF's final `layernorm`, applied here to every position, not to the pooled vector.
        feature_map = self.model.layernorm(feature_map.permute(0, 2, 3, 1))
        repeat = self.token_grid_size // feature_map.shape[1]
        if repeat > 1:  # 8x8 maps of the 224-px families are repeated up to the 16x16 token grid
            feature_map = feature_map.repeat_interleave(repeat, dim=2).repeat_interleave(repeat, dim=1)
        tokens = feature_map.flatten(1, 2)
        return BaseModelOutput(last_hidden_state=torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1))


class SphinxXCharReader(nn.Module):
    """A ConvNeXt trunk with a linear head that names the character at each grid cell (the demo model's code reader).
    Its logits feed only `reader_words` gates (`SphinxXConfig.char_reader_config`)."""

    def __init__(self, config, token_grid_size: int):
        super().__init__()
        self.encoder = SphinxXConvNextEncoder(config, token_grid_size)
        self.head = nn.Linear(config.hidden_sizes[-1], config.num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, 3, S, S]` -> `[N, 1 + g*g, num_labels]` logits: of the mean token, then of the row-major grid."""
        return self.head(self.encoder(pixel_values).last_hidden_state)


class SphinxXPlaceReader(nn.Module):
    """A small convolutional head on the ConvNeXt expert's tile grid that finds the cell holding each object's centre
    (the demo model's grounding reader, `SphinxXConfig.place_words`)."""

    def __init__(self, in_channels: int, hidden_size: int, token_grid_size: int):
        super().__init__()
        self.token_grid_size = token_grid_size
        self.conv = nn.Conv2d(in_channels, hidden_size, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.head = nn.Conv2d(hidden_size, 1, kernel_size=1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """`[N, 1 + g*g, C]` ConvNeXt output (mean token, then the row-major grid) -> `[N, g*g]` logits that an
        object's centre lies in each cell."""
        grid = self.token_grid_size
        cells = states[:, 1:].transpose(1, 2).unflatten(2, (grid, grid))
        return self.head(self.act(self.conv(cells))).flatten(1)


class SphinxXDinov2Encoder(nn.Module):
    """DINOv2 on HF `Dinov2Model`; inputs arrive CLIP-normalised and are re-normalised to DINOv2 statistics."""

    def __init__(self, config):
        super().__init__()
        self.model = Dinov2Model(config)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutput:
        """`[N, 3, S, S]` -> `last_hidden_state` `[N, 1 + (S / patch_size)**2, C]` (final-norm CLS token, then patch
        tokens), with DINOv2's `hidden_states` / `attentions` when `output_hidden_states` / `output_attentions`."""
        # x * (std_clip / std_dino) + (mean_clip - mean_dino) / std_dino, with the constants in the pixel dtype like
        # the reference (computed per call: weights are materialised from the meta device, buffers would not be).
        clip_mean, clip_std, dino_mean, dino_std = (
            torch.tensor(stats, device=pixel_values.device).view(1, 3, 1, 1)
            for stats in (CLIP_MEAN, CLIP_STD, DINOV2_MEAN, DINOV2_STD)
        )
        scale = (clip_std / dino_std).to(pixel_values.dtype)
        shift = ((clip_mean - dino_mean) / dino_std).to(pixel_values.dtype)
        return self.model(pixel_values * scale + shift, return_dict=True, **kwargs)


class SphinxXClipEncoder(nn.Module):
    """CLIP ViT on HF `CLIPVisionModel`, with `post_layernorm` applied to all tokens and no projection."""

    def __init__(self, config):
        super().__init__()
        self.model = CLIPVisionModel(config)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutput:
        """`[N, 3, S, S]` -> `last_hidden_state` `[N, 1 + (S / patch_size)**2, C]` (CLS token, then patch tokens), with
        CLIP's `hidden_states` / `attentions` when asked."""
        outputs = self.model(pixel_values, return_dict=True, **kwargs)
        return BaseModelOutput(
            last_hidden_state=self.model.post_layernorm(outputs.last_hidden_state),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class SphinxXQFormerEncoder(nn.Module):
    """BLIP-2 vision tower + Q-Former: the last hidden state of the learned queries, before any language projection."""

    def __init__(self, config):
        super().__init__()
        if "flash" in (config.qformer_config._attn_implementation or ""):
            # BLIP-2's Q-Former has no flash-attention; its vision tower keeps it.
            config.qformer_config._attn_implementation = "sdpa"
        self.vision_model = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(config.qformer_config)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutput:
        """`[N, 3, S, S]` -> `last_hidden_state` `[N, num_query_tokens, qformer_config.hidden_size]`, with the vision
        tower's `hidden_states` / `attentions` when asked."""
        vision_outputs = self.vision_model(pixel_values, return_dict=True, **kwargs)
        image_embeds = vision_outputs.last_hidden_state
        image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        queries = self.qformer(
            query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=image_attention_mask
        ).last_hidden_state
        return BaseModelOutput(
            last_hidden_state=queries, hidden_states=vision_outputs.hidden_states, attentions=vision_outputs.attentions
        )


class SphinxXProjector(nn.Module):
    """Linear projection to the LLM width followed by LayerNorm (the reference `visual_proj` / `qformer_proj`)."""

    def __init__(self, in_features: int, out_features: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features, eps=eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(features))


class SphinxXImageTags(nn.Module):
    """The learned `[hidden]` embeddings that frame every encoded view (`start`, `end`) and stand for a skipped tile
    (`skip`). A module of their own, so that adapters can train them (peft's `modules_to_save` holds modules)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.start = nn.Parameter(torch.zeros(hidden_size))
        self.end = nn.Parameter(torch.zeros(hidden_size))
        self.skip = nn.Parameter(torch.zeros(hidden_size))


class SphinxXPreTrainedModel(PreTrainedModel):
    config: SphinxXConfig
    config_class = SphinxXConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = "cache"
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The image path runs once, before the prefill (`generate` passes `mm_encoder_outputs`); decoding steps are text
    # only and compile as one graph (static cache, `torch.compile`).
    _can_compile_fullgraph = True

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs):
        """`PreTrainedModel.set_attn_implementation`; one backend goes to every sub-model that supports it: ConvNeXt
        (no attention layer) stays eager while its config shows the requested value, BLIP-2's Q-Former (no
        flash-attention) takes SDPA under flash-attention. A `dict` chooses per sub-config, as in transformers."""
        config = self.config
        if isinstance(attn_implementation, str):
            qformer = "sdpa" if "flash" in attn_implementation else attn_implementation
            per_sub_config = {key: attn_implementation for key in ("", "text_config", "clip_config", "dinov2_config")}
            per_sub_config["qformer_config"] = {
                "": attn_implementation, "vision_config": attn_implementation, "qformer_config": qformer
            }
        else:
            per_sub_config = dict(attn_implementation)
        convnext = per_sub_config.pop("convnext_config", attn_implementation if isinstance(attn_implementation, str)
                                      else config.convnext_config and config.convnext_config._attn_implementation)
        super().set_attn_implementation({**per_sub_config, "convnext_config": "eager"}, **kwargs)
        if config.convnext_config is not None:
            config.convnext_config._attn_implementation_internal = convnext

    def post_init(self):
        super().post_init()
        # `post_init` gathers `_no_split_modules` from direct children only; the encoders are HF models one level down,
        # inside their adapters. Only block classes this model holds are listed (FSDP auto-wrap refuses others).
        for module in self.modules():
            if module is not self and isinstance(module, PreTrainedModel):
                self._no_split_modules.update(module._no_split_modules or [])
                self._keep_in_fp32_modules.update(module._keep_in_fp32_modules or [])

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.text_config.initializer_range
        if isinstance(module, SphinxXImageTags):
            for tag in (module.start, module.end, module.skip):
                nn.init.normal_(tag, mean=0.0, std=std)
        elif isinstance(module, SphinxXQFormerEncoder):
            nn.init.normal_(module.query_tokens, mean=0.0, std=std)


class SphinxXModel(SphinxXPreTrainedModel):
    """Visual experts, projectors, image tags and the bare LLM decoder."""

    def __init__(self, config: SphinxXConfig):
        super().__init__(config)
        grid = config.token_grid_size
        self.clip = SphinxXClipEncoder(config.clip_config) if config.clip_config is not None else None
        self.convnext = SphinxXConvNextEncoder(config.convnext_config, grid) if config.convnext_config else None
        self.dinov2 = SphinxXDinov2Encoder(config.dinov2_config) if config.dinov2_config is not None else None
        self.qformer = SphinxXQFormerEncoder(config.qformer_config) if config.qformer_config is not None else None
        self.char_reader = (
            SphinxXCharReader(config.char_reader_config, grid) if config.char_reader_config is not None else None
        )
        self.place_reader = (
            SphinxXPlaceReader(config.convnext_config.hidden_sizes[-1], config.place_words["hidden_size"], grid)
            if config.place_words is not None
            else None
        )

        hidden_size = config.text_config.hidden_size
        eps = config.projector_layer_norm_eps
        self.visual_projector = SphinxXProjector(config.vision_feature_size, hidden_size, eps)
        self.qformer_projector = (
            SphinxXProjector(config.qformer_config.qformer_config.hidden_size, hidden_size, eps)
            if config.qformer_config is not None
            else None
        )
        # Learned tags around every encoded view, and the SPHINX-X embedding of a skipped (fully padded) tile.
        self.image_tags = SphinxXImageTags(hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def grid_encoders(self) -> list[tuple[nn.Module, int]]:
        """(encoder, view size) of the grid encoders, in channel-concatenation order."""
        encoders = [(self.clip, self.config.clip_config), (self.convnext, self.config.convnext_config)]
        encoders.append((self.dinov2, self.config.dinov2_config))
        return [(encoder, cfg.image_size) for encoder, cfg in encoders if encoder is not None]

    def encoder_views(self, pixel_values: torch.Tensor, view_size: int, view_mask: torch.Tensor) -> torch.Tensor:
        """The `[n_kept_views, 3, view_size, view_size]` views an encoder receives (see `SphinxXConfig.view_source`)."""
        config = self.config
        if config.view_source == "canvas":
            return build_views(pixel_values, view_size, config.image_grid, config.tile_size, view_mask)
        # "base_views" (SPHINX, SPHINX-1k): the global view and the native tiles at tile size (a single-view canvas
        # is used as it is), nearest-resampled for encoders that take another size (ConvNeXt at 256).
        if config.image_grid == [1, 1]:
            base_views = pixel_values[view_mask[:, 0]]
        else:
            base_views = build_views(pixel_values, config.tile_size, config.image_grid, config.tile_size, view_mask)
        if view_size == config.tile_size:
            return base_views
        return resample_like_reference(base_views, (view_size, view_size), mode="nearest")

    def read_words(self, view_tokens: torch.Tensor, reader_states: dict, view_mask: torch.Tensor) -> torch.Tensor:
        """Apply the `config.reader_words` gates: where a reader reads a word, the token becomes it.

        Args:
            view_tokens: `[n_views, 1 + g*g, hidden]` projected tokens (global token, then the row-major grid).
            reader_states: per reader name (`"convnext"`, `"char_reader"`), `[n_views, 1 + g*g, C]` its output (mean
                token, then the grid).
            view_mask: `[B, 1 + num_tiles]` bool, the encoded views of each image (its global view first).

        Returns:
            `[n_views, 1 + g*g, hidden]`: per gated cell `p_none * token + sum_k p_k * embedding(token_ids[k])`.
        """
        embeddings = self.get_input_embeddings().weight
        kept = view_mask.sum(dim=1)
        global_views = kept.cumsum(dim=0) - kept
        is_global = torch.zeros(view_tokens.shape[0], dtype=torch.bool, device=view_tokens.device)
        is_global[global_views] = True
        grid = view_tokens[:, 1:]
        for gate in self.config.reader_words:
            first, last = gate["channels"]
            states = reader_states[gate.get("reader", "convnext")]
            probabilities = states[:, 1:, first:last].float().softmax(dim=-1)
            words = probabilities[..., 1:] @ embeddings[gate["token_ids"]].float()
            gated = (probabilities[..., :1] * grid.float() + words).to(grid.dtype)
            if gate["cells"] == "global_first":
                cells = torch.zeros(grid.shape[:2], dtype=torch.bool, device=grid.device)
                cells[global_views, 0] = True
                gated = torch.where(cells[..., None], gated, grid)
            elif gate["cells"] == "tiles":
                gated = torch.where(is_global[:, None, None], grid, gated)
            grid = gated
        return torch.cat([view_tokens[:, :1], grid], dim=1)

    def write_places(self, view_tokens: torch.Tensor, convnext_states: torch.Tensor, view_mask: torch.Tensor):
        """Write where objects are into the tile views (`config.place_words`).

        Args:
            view_tokens: `[n_views, 1 + g*g, hidden]` projected tokens (global token, then the row-major grid).
            convnext_states: `[n_views, 1 + g*g, C]` the ConvNeXt expert's output.
            view_mask: `[B, 1 + num_tiles]` bool, the encoded views of each image (its global view first).

        Returns:
            `[n_views, 1 + g*g, hidden]`: in each tile view, where the place reader finds an object's centre with
            probability `p`, that cell and the next ones in reading order become `(1 - p) * token + p * embedding`
            of the words of the cell's column, then of its row (image-wide columns and rows).
        """
        config, grid = self.config, self.config.token_grid_size
        view_index = view_mask.nonzero()[:, 1]  # per encoded view: 0 for the global view, 1 + t for tile t
        tiles = view_index > 0
        tile = view_index[tiles, None] - 1
        cells = torch.arange(grid * grid, device=view_tokens.device)
        columns = tile % config.image_grid[1] * grid + cells % grid  # [n_tiles, g*g] image-wide column of each cell
        rows = tile // config.image_grid[1] * grid + cells // grid
        column_ids = torch.tensor(config.place_words["column_token_ids"], device=view_tokens.device)
        row_ids = torch.tensor(config.place_words["row_token_ids"], device=view_tokens.device)
        runs = torch.cat([column_ids[columns], row_ids[rows]], dim=-1)  # [n_tiles, g*g, run] the words from each cell
        words = self.get_input_embeddings().weight.float()[runs]
        probabilities = self.place_reader(convnext_states[tiles]).float().sigmoid()  # [n_tiles, g*g]
        written, weight = torch.zeros_like(words[:, :, 0]), torch.zeros_like(probabilities)
        for step in range(runs.shape[-1]):  # word `step` of a run lands `step` cells after its centre
            written[:, step:] += probabilities[:, :cells.numel() - step, None] * words[:, :cells.numel() - step, step]
            weight[:, step:] += probabilities[:, :cells.numel() - step]
        tokens = view_tokens[tiles, 1:].float()
        named = (1 - weight.clamp(max=1))[..., None] * tokens + written
        view_tokens = view_tokens.clone()
        view_tokens[tiles, 1:] = named.to(view_tokens.dtype)
        return view_tokens

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, image_tile_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Encode every kept view once and lay out the image positions of each image.

        Args:
            pixel_values: `[B, 3, H, W]` canvases from `SphinxXImageProcessor`.
            image_tile_mask: `[B, num_tiles]` bool, `True` for tiles to encode. `None` encodes every tile.
            output_hidden_states, output_attentions (`bool`, *optional*): also return the encoders' own.

        Returns:
            `pooler_output`: a list of `B` tensors `[n_i, hidden]`: per view `[start, queries, grid tokens, end]`
            for encoded views, one skip embedding per skipped tile, in the order global view, tiles row-major.
            `last_hidden_state`: `[n_views, tokens, hidden]`, the projected tokens of the encoded views.
            `hidden_states` / `attentions`: when asked, those of the encoders that record them (CLIP, DINOv2, the
            Q-Former's vision tower; ConvNeXt records none), one tuple, encoders in the order Q-Former, CLIP, DINOv2.
        """
        config = self.config
        check_model_inputs(config, 0, pixel_values=pixel_values, image_tile_mask=image_tile_mask)
        # As the reference, the whole vision path runs in the model's dtype (bf16 canvases, fp16 resamplings).
        pixel_values = pixel_values.to(self.visual_projector.linear.weight.dtype)
        batch = pixel_values.shape[0]
        if image_tile_mask is None:
            image_tile_mask = torch.ones(batch, config.num_tiles, dtype=torch.bool, device=pixel_values.device)
        elif not config.use_skip_tokens and not image_tile_mask.all():
            raise ValueError(
                "This model has skip tokens off (its skip embedding is untrained) but `image_tile_mask` skips tiles. "
                "Process images with `SphinxXImageProcessor(skip_padded_tiles=False)`, as the model's saved processor "
                "does, or enable `use_skip_tokens` and train the skip embedding."
            )
        view_mask = torch.cat([image_tile_mask.new_ones(batch, 1), image_tile_mask.bool()], dim=1)

        grid_encoders = self.grid_encoders()
        view_sizes = {view_size for _, view_size in grid_encoders}
        if self.char_reader is not None and config.reader_words:
            view_sizes.add(config.char_reader_config.image_size)
        # Each view size is cut once (the demo's ConvNeXt reader and character reader share their 128-px views).
        views = {size: self.encoder_views(pixel_values, size, view_mask) for size in view_sizes}
        encoder_outputs = [encoder(views[view_size], **kwargs) for encoder, view_size in grid_encoders]
        view_tokens = self.visual_projector(torch.cat([out.last_hidden_state for out in encoder_outputs], dim=-1))
        if config.reader_words or self.place_reader is not None:
            readers = {}
            if self.convnext is not None:
                convnext = next(out for (encoder, _), out in zip(grid_encoders, encoder_outputs)
                                if encoder is self.convnext)
                readers["convnext"] = convnext.last_hidden_state
            if self.char_reader is not None and config.reader_words:
                readers["char_reader"] = self.char_reader(views[config.char_reader_config.image_size])
            # Places first: where a gate reads a word (a Set-of-Mark label on a shape's centre cell), its word wins.
            if self.place_reader is not None:
                view_tokens = self.write_places(view_tokens, readers["convnext"], view_mask)
            if config.reader_words:
                view_tokens = self.read_words(view_tokens, readers, view_mask)
        if self.qformer is not None:
            qformer_views = self.encoder_views(pixel_values, config.qformer_config.vision_config.image_size, view_mask)
            qformer_outputs = self.qformer(qformer_views, **kwargs)
            encoder_outputs.insert(0, qformer_outputs)
            view_tokens = torch.cat([self.qformer_projector(qformer_outputs.last_hidden_state), view_tokens], dim=1)

        n_views, _, hidden = view_tokens.shape
        start = self.image_tags.start.to(view_tokens.dtype).expand(n_views, 1, hidden)
        end = self.image_tags.end.to(view_tokens.dtype).expand(n_views, 1, hidden)
        framed = torch.cat([start, view_tokens, end], dim=1)
        skip = self.image_tags.skip.to(view_tokens.dtype)[None]

        per_image, next_view = [], 0
        for keep_row in view_mask.tolist():
            blocks = []
            for keep in keep_row:
                blocks.append(framed[next_view] if keep else skip)
                next_view += keep
            per_image.append(torch.cat(blocks, dim=0))
        hidden_states = sum((out.hidden_states or () for out in encoder_outputs), ()) or None
        attentions = sum((out.attentions or () for out in encoder_outputs), ()) or None
        return BaseModelOutputWithPooling(
            last_hidden_state=view_tokens, pooler_output=per_image, hidden_states=hidden_states, attentions=attentions
        )

    def embed_input_ids(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """`[B, L]` -> `[B, L, hidden]` token embeddings.

        The placeholder id is an ordinary token of the embedding table when the table holds it (new models, the
        tests' configs). Converted checkpoints keep the reference's id `vocab_size`, one past the table (their
        tokenizer appends `<image>` to the LLM's vocabulary, so logits keep the reference's shape); there the
        placeholder takes row 0's embedding, overwritten by the image features when images are given.
        """
        embeddings = self.get_input_embeddings()
        if self.config.image_token_id >= embeddings.num_embeddings:
            input_ids = input_ids.masked_fill(input_ids == self.config.image_token_id, 0)
        return embeddings(input_ids)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.BoolTensor:
        """`[B, L, 1]` image positions, from `input_ids`, or from `inputs_embeds` equal to the placeholder's embedding
        row (LLaVA's convention); checks that they match the `[n, hidden]` image features."""
        if input_ids is not None:
            image_mask = input_ids == self.config.image_token_id
        else:
            embeddings = self.get_input_embeddings()
            if self.config.image_token_id >= embeddings.num_embeddings:
                raise ValueError(
                    f"Images with `inputs_embeds` need the image placeholder id ({self.config.image_token_id}) inside "
                    f"the embedding table ({embeddings.num_embeddings} rows), to find the image positions by its "
                    "embedding; this checkpoint keeps the reference's out-of-table id. Pass `input_ids` instead."
                )
            placeholder = embeddings(torch.tensor(self.config.image_token_id, device=inputs_embeds.device))
            image_mask = (inputs_embeds == placeholder).all(-1)
        n_positions = int(image_mask.sum())
        if n_positions != image_features.shape[0]:
            raise ValueError(
                f"Image features and image tokens do not match: the text holds {n_positions} image placeholder "
                f"tokens but the images produce {image_features.shape[0]} positions. Build the inputs with "
                "SphinxXProcessor (it expands each `<image>` to the right count) and do not truncate them."
            )
        return image_mask[..., None]

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_tile_mask: torch.BoolTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> MultimodalMoeBaseModelOutputWithPast:
        r"""
        input_ids (`[B, L]`): token ids; image positions hold `config.image_token_id`. Without images, placeholder
            ids are ordinary tokens (see `embed_input_ids`).
        inputs_embeds (`[B, L, hidden]`): instead of `input_ids`; with images, the image positions are those equal to
            the placeholder's embedding row (`get_placeholder_mask`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        check_model_inputs(self.config, self.get_input_embeddings().num_embeddings, input_ids=input_ids)
        if pixel_values is not None and mm_encoder_outputs is not None and mm_encoder_outputs.get("image") is not None:
            raise ValueError("Pass either `pixel_values` or pre-computed `mm_encoder_outputs`, not both.")
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if mm_encoder_outputs.get("image") is None and pixel_values is not None and pixel_values.shape[0] > 0:
            mm_encoder_outputs["image"] = self.get_image_features(pixel_values, image_tile_mask, return_dict=True)

        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)

        image_outputs = mm_encoder_outputs.get("image")
        if image_outputs is not None:
            image_features = torch.cat(list(image_outputs.pooler_output), dim=0).to(
                inputs_embeds.device, inputs_embeds.dtype
            )
            image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask.expand_as(inputs_embeds), image_features)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return MultimodalMoeBaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=getattr(outputs, "router_logits", None),
            image_outputs=image_outputs,
        )


class StopOnTokenSequences(StoppingCriteria):
    """Stops a sequence once it ends with one of the given token sequences (the reference stops on `"\\n###"`)."""

    def __init__(self, sequences: list[list[int]]):
        self.sequences = [torch.tensor(seq) for seq in sequences if seq]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for seq in self.sequences:
            if input_ids.shape[1] >= len(seq):
                done |= (input_ids[:, -len(seq) :] == seq.to(input_ids.device)).all(dim=1)
        return done


class HideStopSequencesStreamer(BaseStreamer):
    """Passes a generation on to a streamer without the stop sequences (the reference terminator `"\\n###"`).

    Tokens that may begin a stop sequence are held back until the sequence breaks off (then they are passed on) or
    completes (then they are dropped: generation stops there), so `TextStreamer` prints what `processor.decode` returns.
    The first `put` (the prompt) and batched generations (which transformers' text streamers do not take) pass as is.
    """

    def __init__(self, streamer: BaseStreamer, sequences: list[list[int]]):
        self.streamer = streamer
        self.sequences = [list(seq) for seq in sequences if seq]
        self.held: list[int] = []
        self.prompt_passed = False

    def put(self, value: torch.Tensor):
        if not self.prompt_passed or value.numel() != 1:
            self.prompt_passed = True
            self.streamer.put(value)
            return
        self.held.append(int(value.reshape(-1)[0]))
        if any(self.held[-len(seq) :] == seq for seq in self.sequences):
            self.held = []
            return
        # Keep the longest tail of the held tokens that still begins a stop sequence; pass on the rest.
        keep = max(
            (n for n in range(1, len(self.held) + 1) for seq in self.sequences if self.held[-n:] == seq[:n]), default=0
        )
        if len(self.held) > keep:
            self.streamer.put(torch.tensor(self.held[: len(self.held) - keep]))
            self.held = self.held[len(self.held) - keep :]

    def end(self):
        if self.held:  # generation ended (EOS, length) inside what looked like a stop sequence
            self.streamer.put(torch.tensor(self.held))
            self.held = []
        self.streamer.end()


def ignore_image_positions_in_labels(module, args, kwargs):
    """Forward pre-hook: image placeholder ids (outside the vocabulary) are inputs, never targets.

    It runs before whatever `forward` the instance has, including one patched onto it that scores `labels` without
    calling the class's `forward` (TRL's fused LM head), whose collator copies the placeholders into the labels.
    """
    for key in ("labels", "shift_labels"):
        if kwargs.get(key) is not None:
            kwargs[key] = kwargs[key].masked_fill(kwargs[key] == module.config.image_token_id, -100)
    return args, kwargs


class SphinxXForConditionalGeneration(SphinxXPreTrainedModel, GenerationMixin):
    """SPHINX-X with a language-modelling head; `generate` encodes the images once, before the prefill."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: SphinxXConfig):
        super().__init__(config)
        self.model = SphinxXModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.register_forward_pre_hook(ignore_image_positions_in_labels, with_kwargs=True)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values, image_tile_mask=None, **kwargs) -> BaseModelOutputWithPooling:
        """See `SphinxXModel.get_image_features` (`return_dict`, `output_hidden_states`, `output_attentions` apply)."""
        return self.model.get_image_features(pixel_values, image_tile_mask, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_tile_mask: torch.BoolTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> MultimodalMoeCausalLMOutputWithPast:
        r"""
        input_ids (`[B, L]`): token ids; image positions hold `config.image_token_id` (see `SphinxXProcessor`).
        pixel_values (`[B_img, 3, H, W]`) and image_tile_mask (`[B_img, num_tiles]`): from the image processor.
        labels (`[B, L]`): targets, `-100` where ignored; the loss is the usual shifted next-token loss.
        output_router_logits: Mixtral LLMs only; adds `router_aux_loss_coef * aux_loss` to the loss.
        """
        text_config = self.config.text_config
        is_moe = hasattr(text_config, "num_local_experts")
        if is_moe:
            kwargs["output_router_logits"] = (
                output_router_logits if output_router_logits is not None else text_config.output_router_logits
            )
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_tile_mask=image_tile_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            # Image positions are inputs, never targets (TRL's collator copies them into the labels).
            labels = labels.masked_fill(labels == self.config.image_token_id, -100)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=text_config.vocab_size, **kwargs)

        aux_loss = None
        if is_moe and kwargs["output_router_logits"] and outputs.router_logits is not None:
            aux_loss = load_balancing_loss_func(
                outputs.router_logits, text_config.num_local_experts, text_config.num_experts_per_tok, attention_mask
            )
            if loss is not None:
                loss = loss + text_config.router_aux_loss_coef * aux_loss.to(loss.device)

        return MultimodalMoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
            image_outputs=outputs.image_outputs,
        )

    def generate(
        self,
        *args,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: BaseStreamer | None = None,
        **kwargs,
    ):
        """`GenerationMixin.generate`, also stopping at the token sequences of `generation_config.stop_token_sequences`
        (the reference terminator `"\\n###"`), in addition to EOS; a `streamer` never receives those sequences. A
        prompt longer than the LLM's context is refused (`check_prompt_length`)."""
        prompt = kwargs.get("input_ids", args[0] if args else None)
        prompt = prompt if prompt is not None else kwargs.get("inputs_embeds")
        if prompt is not None:
            check_prompt_length(self.config.text_config, prompt.shape[1])
        generation_config = kwargs.get("generation_config") or self.generation_config
        sequences = getattr(generation_config, "stop_token_sequences", None)
        stopping_criteria = StoppingCriteriaList(stopping_criteria or [])
        if sequences:
            stopping_criteria.append(StopOnTokenSequences(sequences))
            if streamer is not None:
                streamer = HideStopSequencesStreamer(streamer, sequences)
        return super().generate(*args, stopping_criteria=stopping_criteria, streamer=streamer, **kwargs)


__all__ = ["SphinxXPreTrainedModel", "SphinxXModel", "SphinxXForConditionalGeneration"]
