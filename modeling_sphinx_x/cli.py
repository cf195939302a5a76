"""The `sphinx-x` command line: chat with a model, convert and publish checkpoints, train.

Nothing heavy is imported at the top of this file (the console script loads it without the package, see
`sphinx_x_cli`): each command imports torch, transformers and the package itself when it runs.
"""

import argparse
import sys
from pathlib import Path


DTYPES = ("float32", "bfloat16", "float16")
PRESETS = ("sphinx-x-tiny", "sphinx-x-internlm2-7b", "sphinx-x-llama2-13b", "sphinx-x-moe", "sphinx-x-demo")


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def resolve_device(device: str | None) -> str:
    """`--device`: the first GPU when there is one and none is asked for; a GPU asked for must exist."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu.")
    return device


def model_location(model: str | None) -> str | Path:
    """`--model`: a local folder, or a Hub id; a path that names no folder is refused as such. Without one, the
    embedded demo model (built once from its wheels, see `sphinx_x.demo`)."""
    if model is None:
        from .demo import demo_model_path

        return demo_model_path()
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"--model {model}: is a file; pass the folder that holds config.json.")
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model:  # a path, not ORG/NAME
        raise ValueError(f"--model {model}: no such folder. Pass a converted model folder or a Hub id (ORG/NAME).")
    return model


class StopStringFilter:
    """Prints streamed text as it comes, holding back what could be the start of the terminator `"\\n###"`."""

    def __init__(self, stop_string: str, out=None):
        self.stop_string, self.out = stop_string, out or sys.stdout
        self.text, self.printed = "", 0

    def feed(self, chunk: str) -> None:
        self.text += chunk
        end = self.text.find(self.stop_string)
        if end < 0:
            end = max(self.printed, len(self.text) - len(self.stop_string) + 1)
        self.emit(end)

    def close(self) -> None:
        end = self.text.find(self.stop_string)
        self.emit(len(self.text) if end < 0 else end)
        self.out.write("\n")
        self.out.flush()

    def emit(self, end: int) -> None:
        if end > self.printed:
            self.out.write(self.text[self.printed : end])
            self.out.flush()
            self.printed = end


def answer(model, processor, messages, max_new_tokens: int) -> str:
    """Generate the assistant's reply to `messages`, streaming it to stdout; returns the reply."""
    from .apps.streaming import stream_reply
    from .processors.processing_sphinx_x import STOP_STRING

    printer = StopStringFilter(STOP_STRING)
    try:
        for chunk in stream_reply(model, processor, messages, max_new_tokens):
            printer.feed(chunk)
    finally:
        printer.close()
    return processor.strip_stop_string(printer.text).strip()


def load_model(model: str | None, dtype: str = "float32", device: str | None = None):
    """`(model, processor)` of a folder or Hub id, or of the embedded demo model when `model` is None (what
    `sphinx-x chat`, `ground`, `demo` and `eval` use without `--model`)."""
    model_path = model_location(model)
    device = resolve_device(device)
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import sphinx_x  # noqa: F401  (registers the model with the Auto classes)

    try:
        loaded = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch_dtype(dtype))
    except SafetensorError as error:
        raise ValueError(f"--model {model_path}: a weight file cannot be read ({error}); convert it again.") from None
    return loaded.to(device).eval(), AutoProcessor.from_pretrained(model_path)


def chat(args) -> None:
    model, processor = load_model(args.model, args.dtype, args.device)
    content = [{"type": "image", "image": args.image}] if args.image else []
    messages = []
    questions = [args.question] if args.question else None
    while True:
        if questions is not None:
            if not questions:
                return
            question = questions.pop()
        else:
            if sys.stdin.isatty():  # the prompt goes to the terminal, never into the answers on stdout
                print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                return
            question = line.strip()
            if not question:
                continue
        messages.append({"role": "user", "content": content + [{"type": "text", "text": question}]})
        content = []  # the image belongs to the first turn, as in the reference
        reply = answer(model, processor, messages, args.max_new_tokens)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})


def ground_command(args) -> None:
    from .apps.ground import run_ground
    from .processors.image_processing_sphinx_x import load_image, to_rgb

    image = to_rgb(load_image(args.image))  # a bad image fails before the model loads
    model, processor = load_model(args.model, args.dtype, args.device)
    run_ground(model, processor, image, args)


def demo_command(args) -> None:
    try:
        from .apps.web_demo import launch
    except ImportError as error:
        raise ValueError(f'the web demo needs the "demo" extra ({error}): pip install "sphinx-x[demo]"') from error

    model, processor = load_model(args.model, args.dtype, args.device)
    launch(model, processor, sam=args.sam, port=args.port, host=args.host, max_new_tokens=args.max_new_tokens)


def convert_accessory_command(args) -> None:
    from .conversion.accessory import convert_accessory

    dst = convert_accessory(
        args.src,
        args.dst,
        dtype=torch_dtype(args.dtype),
        dinov2_num_heads=args.dinov2_num_heads,
        clip_activation=args.clip_activation,
        clip_num_heads=args.clip_num_heads,
        qformer_num_heads=args.qformer_num_heads,
        qformer_vision_num_heads=args.qformer_vision_num_heads,
        max_shard_size=args.max_shard_size,
        verify=args.verify,
        overwrite=args.overwrite,
    )
    print(f"Wrote {dst}")


def convert_assemble_command(args) -> None:
    from .conversion.assemble import assemble

    dst = assemble(
        args.preset,
        args.llm,
        args.convnext,
        args.dinov2,
        args.dst,
        dtype=torch_dtype(args.dtype),
        overwrite=args.overwrite,
        verify=args.verify,
    )
    print(f"Wrote {dst}")


def publish_command(args) -> None:
    from .conversion.publish import publish

    publish(
        args.folder, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run, card=args.card
    )


def train_command(args) -> None:
    try:
        from .training.train import run_train_command
    except ImportError as error:
        raise ValueError(f'training needs the "train" extra ({error}): pip install "sphinx-x[train]"') from error

    run_train_command(args)


def eval_command(args) -> None:
    try:
        from .evaluation.runner import eval_command as run_eval
    except ImportError as error:
        raise ValueError(f'evaluation needs the "eval" extra ({error}): pip install "sphinx-x[eval]"') from error

    run_eval(args)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_train_arguments(parser) -> None:
    """The arguments of `sphinx-x train`."""
    parser.add_argument("recipe", help="recipe YAML (see training/recipes/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set sft.max_steps=100 --set peft.r=8 (repeatable; VALUE is YAML)",
    )
    parser.add_argument("--output-dir", help="shortcut for --set sft.output_dir=DIR")
    parser.add_argument(
        "--resume-from-checkpoint",
        nargs="?",
        const=True,
        metavar="CHECKPOINT",
        help="resume from CHECKPOINT, or from the last complete checkpoint in the output folder when none is given",
    )


def add_generation_arguments(parser) -> None:
    """The answer length, dtype and device options of the commands that generate."""
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=256, help="longest answer, in tokens (default: 256)"
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="weight and activation dtype (default: float32)"
    )
    parser.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sphinx-x", description="SPHINX-X multimodal LLMs for transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    chat_parser = commands.add_parser("chat", help="chat about an image (the embedded demo model by default)")
    chat_parser.add_argument("question", nargs="?", help="ask one question and exit; without it, chat on stdin")
    chat_parser.add_argument("--image", help="image path or URL for the first turn")
    chat_parser.add_argument("--model", help="model folder or Hub id (default: the embedded demo model)")
    add_generation_arguments(chat_parser)
    chat_parser.set_defaults(run=chat)

    ground = commands.add_parser("ground", help="ask for boxes, draw them (and SAM masks) on the image, write JSON")
    ground.add_argument("question", help='e.g. "Detect all people shown in the image."')
    ground.add_argument("--image", required=True, help="image path or URL")
    ground.add_argument("--model", help="model folder or Hub id (default: the embedded demo model)")
    ground.add_argument("--sam", help="SAM checkpoint id or folder for one mask per box, e.g. facebook/sam-vit-base")
    ground.add_argument("--out", help="annotated image to write (PNG, JPEG, ...)")
    ground.add_argument("--json", help="JSON file for the phrases, pixel boxes, points, mask scores and mask RLEs")
    add_generation_arguments(ground)
    ground.set_defaults(run=ground_command)

    demo = commands.add_parser("demo", help="Gradio web demo: chat about an image, boxes and masks drawn beside it")
    demo.add_argument("--model", help="model folder or Hub id (default: the embedded demo model)")
    demo.add_argument("--sam", help="SAM checkpoint id or folder, to add a mask per box")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve the network)")
    add_generation_arguments(demo)
    demo.set_defaults(run=demo_command)

    convert = commands.add_parser("convert", help="convert checkpoints to the transformers format")
    sources = convert.add_subparsers(dest="source", required=True)
    accessory = sources.add_parser("accessory", help="a LLaMA2-Accessory SPHINX checkpoint folder")
    accessory.add_argument("src", help="folder with consolidated.*.model.pth, config.json, meta.json, tokenizer.model")
    accessory.add_argument("dst", help="output folder (written atomically)")
    accessory.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of the written weights")
    accessory.add_argument("--dinov2-num-heads", type=int, help="DINOv2 heads when its width is not a multiple of 64")
    accessory.add_argument(
        "--clip-activation",
        choices=["gelu", "quick_gelu"],
        help="CLIP activation (default: gelu, or quick_gelu when config.json sets load_pretrained_visual_encoder)",
    )
    accessory.add_argument("--clip-num-heads", type=int, help="CLIP heads when its width is not a multiple of 64")
    accessory.add_argument(
        "--qformer-num-heads", type=int, help="Q-Former heads when its width is not a multiple of 64"
    )
    accessory.add_argument("--qformer-vision-num-heads", type=int, help="BLIP-2 vision heads when it is not 1408 wide")
    accessory.add_argument("--max-shard-size", default="5GB", help="largest weight file, e.g. 5GB")
    accessory.add_argument(
        "--verify",
        action="store_true",
        help="reload the result and run a forward pass and a short generate before finishing",
    )
    accessory.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    accessory.set_defaults(run=convert_accessory_command)

    assemble = sources.add_parser("assemble", help="an untrained SPHINX-X from a base LLM, ConvNeXt and DINOv2")
    assemble.add_argument(
        "--preset",
        required=True,
        choices=PRESETS,
    )
    assemble.add_argument(
        "--llm",
        required=True,
        help="HF folder of TinyLlama / Llama-2 / SmolLM2 / Mixtral, InternLM2 in its own format, or a GGUF file",
    )
    assemble.add_argument(
        "--convnext",
        help="open_clip CLIP ConvNeXt-XXLarge folder or file, or a timm ConvNeXt trunk (none for sphinx-x-demo)",
    )
    assemble.add_argument("--dinov2", required=True, help="HF Dinov2Model folder (facebook/dinov2-giant, or any size)")
    assemble.add_argument("dst", help="output folder (written atomically)")
    assemble.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of the written weights")
    assemble.add_argument(
        "--verify",
        action="store_true",
        help="reload the result and run a forward pass and a short generate before finishing",
    )
    assemble.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    assemble.set_defaults(run=convert_assemble_command)

    train = commands.add_parser("train", help="one-stage SFT from a recipe (TRL SFTTrainer)")
    add_train_arguments(train)
    train.set_defaults(run=train_command)

    evaluate = commands.add_parser("eval", help="score a model on benchmarks (MMBench, MME, POPE, VQA, RefCOCO, ...)")
    evaluate.add_argument("--model", help="model folder or Hub id (default: the embedded demo model)")
    evaluate.add_argument("--task", required=True, help="comma-separated tasks or groups, e.g. mme,pope or demo")
    evaluate.add_argument("--limit", type=positive_int, help="the first N rows of each task only")
    evaluate.add_argument("--batch-size", type=positive_int, default=8, help="questions per generate call")
    evaluate.add_argument("--output", default="sphinx-x-eval/results.json",
                          help="results JSON; predictions go to <stem>-predictions/ beside it (reruns resume)")
    evaluate.add_argument("--data", nargs="+", help="local files in the task's Hub schema instead of the Hub dataset")
    evaluate.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype (default: float32)")
    evaluate.add_argument("--device", help="torch device, e.g. cpu, cuda (default: cuda when available)")
    evaluate.set_defaults(run=eval_command)

    publish = commands.add_parser("publish", help="upload a converted folder to the Hugging Face Hub in one commit")
    publish.add_argument("folder")
    publish.add_argument("--repo-id", required=True, help="ORG/NAME")
    publish.add_argument("--private", action="store_true", help="create the repository private (new ones only)")
    publish.add_argument("--revision", help="branch to commit to (created when missing)")
    publish.add_argument("--dry-run", action="store_true", help="print the commit plan; no network call")
    publish.add_argument(
        "--card",
        help="card template, a name from model_cards/ such as sphinx-x-tiny (default: the folder's README.md, "
        "else chosen from config.json)",
    )
    publish.set_defaults(run=publish_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as error:  # what the user can fix; anything else is a bug and keeps its traceback
        print(f"sphinx-x: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM inside a writer: whatever was being written is already removed
        print("sphinx-x: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
