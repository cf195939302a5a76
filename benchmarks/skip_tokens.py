"""Prefill cost of SPHINX-X skip tokens: image positions and wall time with and without skipping padded tiles.

For each aspect ratio (width:height) a synthetic image is laid on the canvas by the image processor (top-left,
skip mode). The prefill, one forward over the whole prompt under `torch.inference_mode()`, runs twice on the same
`pixel_values`: with the processor's `image_tile_mask` (skipped tiles are not encoded and cost one position each)
and with every tile encoded (`image_tile_mask` all True, the prompt re-expanded to the matching placeholder count).
Both variants run side by side, alternating within every repeat, after one warm-up each; the median is reported.

    python benchmarks/skip_tokens.py                      # small random model (default), 5 repeats
    python benchmarks/skip_tokens.py --preset tiny-random --repeats 3
"""

import argparse
import os
import statistics
import time

import numpy as np
import PIL.Image
import torch

import sphinx_x
from sphinx_x.presets import llama, preset_config, small_encoders


ASPECT_RATIOS = [(1, 1), (2, 1), (3, 1), (1, 3), (4, 1)]


def small_random_overrides() -> dict:
    """Wider and deeper than `tiny-random` (a prefill that costs something on a CPU), same geometry: 1024 canvas,
    2x2 grid of 512 tiles, ConvNeXt views at 512, DINOv2 views at 224, 259 positions per encoded view."""
    return {
        "text_config": llama(384, 1024, 4, 6, 3, vocab=512),
        **small_encoders([32, 64, 128, 256], [1, 1, 2, 1], 512, 192, 3, 3, 224, dinov2_mlp_ratio=4),
    }


PRESETS = {"small-random": ("tiny-random", small_random_overrides), "tiny-random": ("tiny-random", dict)}


def build_model(preset: str, seed: int):
    base, overrides = PRESETS[preset]
    torch.manual_seed(seed)
    config = preset_config(base, **overrides())
    model = sphinx_x.SphinxXForConditionalGeneration(config).eval()
    image_processor = sphinx_x.SphinxXImageProcessor(
        tile_size=config.tile_size,
        image_grid=config.image_grid,
        skip_padded_tiles=True,
        tokens_per_view=config.tokens_per_view,
    )
    return model, image_processor


def synthetic_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """Smooth gradients plus noise, so the content is not constant."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 37.0)], axis=-1)
    pixels = np.clip(base * 200 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(pixels)


def prompt_ids(config, n_image_positions: int, prompt_tokens: int, seed: int) -> torch.Tensor:
    """`[1, L]`: BOS, the image placeholder run, then `prompt_tokens` random text tokens (the reference order)."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(3, config.text_config.vocab_size, (prompt_tokens,), generator=generator)
    image = torch.full((n_image_positions,), config.image_token_id)
    bos = torch.tensor([config.text_config.bos_token_id])
    return torch.cat([bos, image, text])[None]


def config_summary(model) -> str:
    config = model.config
    text = config.text_config
    convnext, dinov2 = config.convnext_config, config.dinov2_config
    n_params = lambda module: sum(p.numel() for p in module.parameters()) / 1e6  # noqa: E731
    inner = model.model
    return "\n".join(
        [
            f"- LLM: {text.model_type}, hidden {text.hidden_size}, intermediate {text.intermediate_size}, "
            f"{text.num_hidden_layers} layers, {text.num_attention_heads} heads / {text.num_key_value_heads} kv, "
            f"vocab {text.vocab_size}, attention {text._attn_implementation} "
            f"({n_params(inner.language_model):.1f} M params)",
            f"- ConvNeXt: depths {convnext.depths}, widths {convnext.hidden_sizes}, views {convnext.image_size} px "
            f"({n_params(inner.convnext):.2f} M params)",
            f"- DINOv2: hidden {dinov2.hidden_size}, {dinov2.num_hidden_layers} layers, views {dinov2.image_size} px "
            f"({n_params(inner.dinov2):.2f} M params)",
            f"- canvas {config.canvas_size[1]}x{config.canvas_size[0]}, grid {config.image_grid} of "
            f"{config.tile_size} px tiles, {config.tokens_per_view} positions per encoded view, dtype {model.dtype}",
        ]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small-random", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant and aspect ratio")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--short-side", type=int, default=384, help="pixels of the image's short side")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens after the image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, image_processor = build_model(args.preset, args.seed)
    config = model.config
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} (timings are only as quiet as the machine)"
    )
    print(
        f"preset {args.preset}, {args.repeats} repeats (median) after {args.warmup} warm-up, "
        f"short side {args.short_side} px, {args.prompt_tokens} text tokens after the image"
    )
    print(config_summary(model))
    print()

    rows = []
    for ratio_w, ratio_h in ASPECT_RATIOS:
        image = synthetic_image(args.short_side * ratio_w, args.short_side * ratio_h, seed=args.seed)
        features = image_processor(image, return_tensors="pt")
        pixel_values, mask = features["pixel_values"], features["image_tile_mask"]
        full_mask = torch.ones_like(mask)
        variants = {}
        for name, tile_mask in (("with", mask), ("without", full_mask)):
            n_image = image_processor.num_image_tokens(tile_mask[0])
            input_ids = prompt_ids(config, n_image, args.prompt_tokens, args.seed)
            variants[name] = {
                "inputs": {
                    "input_ids": input_ids,
                    "attention_mask": torch.ones_like(input_ids),
                    "pixel_values": pixel_values,
                    "image_tile_mask": tile_mask,
                    "use_cache": True,
                    "logits_to_keep": 1,
                },
                "n_image": n_image,
                "times": [],
            }

        with torch.inference_mode():
            for _ in range(args.warmup):
                for variant in variants.values():
                    model(**variant["inputs"])
            for repeat in range(args.repeats):
                # Alternate the order so neither variant always runs first.
                order = list(variants.values()) if repeat % 2 == 0 else list(variants.values())[::-1]
                for variant in order:
                    start = time.perf_counter()
                    model(**variant["inputs"])
                    variant["times"].append(time.perf_counter() - start)

        with_, without = variants["with"], variants["without"]
        ms_with, ms_without = (1e3 * statistics.median(v["times"]) for v in (with_, without))
        rows.append(
            (
                f"{ratio_w}:{ratio_h}",
                "".join("T" if keep else "F" for keep in mask[0].tolist()),
                with_["n_image"],
                without["n_image"],
                with_["n_image"] / without["n_image"],
                ms_with,
                ms_without,
                ms_without / ms_with,
            )
        )

    print(
        "| aspect ratio (w:h) [tile mask] | image tokens with skip | without | token ratio | prefill ms with | "
        "without | speed-up (without/with) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for ratio, tiles, n_with, n_without, token_ratio, ms_with, ms_without, speedup in rows:
        print(
            f"| {ratio} [{tiles}] | {n_with} | {n_without} | {token_ratio:.3f} | {ms_with:.1f} | {ms_without:.1f} | "
            f"{speedup:.2f}x |"
        )
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
