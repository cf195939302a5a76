"""Decode speed with a static cache and with `torch.compile`, against the default (dynamic cache, eager), as ratios.

One prompt with an image (`examples/one_shape.png` by default) is answered greedily, always `--new-tokens` tokens
(the terminator and EOS do not stop it), three ways, side by side in one process:

- `default`: `model.generate` as it comes (dynamic cache, no compilation);
- `static`: `cache_implementation="static"`;
- `static + compile`: the same, with the decoding step compiled (`torch.compile`, full graph; transformers compiles
  on accelerators by default, so `CompileConfig` is told to compile on every device).

The image path and the prefill run once per `generate`, uncompiled. Each generated token is stamped by a stopping
criterion; the decoding time per token is the median interval between consecutive tokens (robust to the scheduling
spikes of a shared machine), then the median over `--repeats` runs alternating the variants, after one warm-up each
(the compiled variant's warm-up, which compiles, is reported separately). All variants must produce the same tokens.

    python benchmarks/compiled_decode.py                                  # the embedded demo model
    python benchmarks/compiled_decode.py --model /tmp/sphinx-tiny-1k-hf   # the converted fixture (see README)
"""

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, CompileConfig, StoppingCriteria

import sphinx_x


EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "examples" / "one_shape.png"


def variants() -> dict[str, dict]:
    compile_everywhere = CompileConfig(fullgraph=True)
    compile_everywhere._compile_all_devices = True
    return {
        "default": {},
        "static": {"cache_implementation": "static"},
        "static + compile": {"cache_implementation": "static", "compile_config": compile_everywhere},
    }


class StampTokens(StoppingCriteria):
    """Never stops; records when each generated token arrives."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def timed_generate(model, inputs, generation_config, new_tokens: int, options: dict):
    """(seconds for the whole generate, median seconds between consecutive generated tokens, output ids)."""
    generation_config = copy.deepcopy(generation_config)
    generation_config.update(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **options)
    stamps = StampTokens()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**inputs, generation_config=generation_config, stopping_criteria=[stamps])
    total = time.perf_counter() - start
    intervals = [later - earlier for earlier, later in zip(stamps.stamps, stamps.stamps[1:])]
    return total, statistics.median(intervals), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: the embedded demo model)")
    parser.add_argument("--image", default=str(EXAMPLE_IMAGE))
    parser.add_argument("--question", default="What color is the shape labeled 1?")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = args.model or sphinx_x.demo_model_path()
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image", "image": args.image},
                                             {"type": "text", "text": args.question}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    # A fixed number of tokens: neither the terminator nor EOS ends the answer early.
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.stop_token_sequences = None

    runs = variants()
    warmup = {name: timed_generate(model, inputs, generation_config, args.new_tokens, options)
              for name, options in runs.items()}
    outputs = {name: output for name, (_, _, output) in warmup.items()}
    same = all(torch.equal(output, outputs["default"]) for output in outputs.values())
    per_token = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, options in runs.items():
            per_token[name].append(timed_generate(model, inputs, generation_config, args.new_tokens, options)[1])

    print(f"model: {path}")
    print(f"prompt: {inputs['input_ids'].shape[1]} positions; {args.new_tokens} new tokens; {args.threads} threads; "
          f"median of {args.repeats}; torch {torch.__version__}")
    print(f"same tokens in all variants: {'yes' if same else 'NO'}")
    print(f"compiled variant's first generate (compiles): {warmup['static + compile'][0]:.1f} s")
    print()
    print("| variant | decode ms / token | speed-up vs default |")
    print("|---|---:|---:|")
    default = statistics.median(per_token["default"])
    for name, times in per_token.items():
        median = statistics.median(times)
        print(f"| {name} | {median * 1e3:.2f} | {default / median:.2f}x |")


if __name__ == "__main__":
    main()
