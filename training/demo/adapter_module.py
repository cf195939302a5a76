"""Put a module trained outside one-stage training into a LoRA adapter, as one of its `modules_to_save`.

    python -m sphinx_x.training.demo.adapter_module ADAPTER MODEL char_reader [--dst FOLDER]

The demo model ships as a LoRA adapter whose `modules_to_save` hold every trained part besides LoRA (projector,
image tags, readers). A reader pretrained on its own (`pretrain_char_reader`) and kept fixed in one-stage training
(`freeze.vision_encoder_learning_rate: 0`) ends up in the adapter unchanged; this writes it there directly, so that an
adapter trained before the reader existed can carry it. The module's weights come from the SPHINX-X folder MODEL
(`model.<module>.*`), in the adapter's dtype; ADAPTER is rewritten in place unless `--dst` names another folder
(a temporary folder, then a rename).
"""

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from ...conversion.common import atomic_output_folder
from ..models import VISION_ENCODER_MODULES


ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # how peft names the wrapped model's parameters in a saved adapter


def put_module(adapter: Path, model: Path, module: str, dst: Path | None = None) -> int:
    """Copy `model.<module>.*` of the SPHINX-X folder `model` into the adapter folder `adapter` (written to `dst`,
    default in place) and list `module` in its `modules_to_save`. Returns the number of tensors copied."""
    adapter, model = Path(adapter), Path(model)
    for path in (adapter / ADAPTER_WEIGHTS, adapter / ADAPTER_CONFIG):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: ADAPTER must be a saved LoRA adapter folder.")
    shards = sorted(model.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{model} holds no *.safetensors: MODEL must be a saved SPHINX-X folder.")
    weights = load_file(adapter / ADAPTER_WEIGHTS)
    dtype = next(iter(weights.values())).dtype
    prefix = f"model.{module}."
    found = {f"{PEFT_PREFIX}{name}": tensor.to(dtype).contiguous()
             for shard in shards for name, tensor in load_file(shard).items() if name.startswith(prefix)}
    if not found:
        raise ValueError(f"{model} has no weights under {prefix!r}: check the module name (e.g. char_reader).")
    weights = {name: tensor for name, tensor in weights.items() if not name.startswith(PEFT_PREFIX + prefix)}
    weights.update(found)
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    config["modules_to_save"] = sorted(set(config.get("modules_to_save") or []) | {module})
    config["exclude_modules"] = VISION_ENCODER_MODULES  # LoRA never wraps the encoders' and readers' layers
    dst = Path(dst) if dst is not None else adapter
    with atomic_output_folder(dst, overwrite=True) as folder:
        for path in adapter.iterdir():
            if path.name not in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) and path.is_file():
                shutil.copy2(path, folder / path.name)
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(weights, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return len(found)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="a saved LoRA adapter folder (e.g. the demo's trained parts)")
    parser.add_argument("model", type=Path, help="a SPHINX-X folder holding the trained module")
    parser.add_argument("module", help="the module's attribute in SphinxXModel, e.g. char_reader")
    parser.add_argument("--dst", type=Path, help="write the adapter here instead of in place")
    args = parser.parse_args(argv)
    try:
        count = put_module(args.adapter, args.model, args.module, args.dst)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"{count} tensors of {args.module} now in {args.dst or args.adapter}")


if __name__ == "__main__":
    main()
