"""Pieces shared by the converters: their error type and the atomic writing of a model folder."""

import shutil
import tempfile
from pathlib import Path


class ConversionError(ValueError):
    """A checkpoint or an argument that cannot be converted; the message names the problem and the fix."""


def write_model_folder(model, processor, dst: Path, *, overwrite: bool = False) -> Path:
    """Save model, processor, generation config and remote code to a temporary sibling of `dst`, then rename it.

    An interrupted or failed conversion leaves `dst` as it was.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        # `save_pretrained` writes `auto_map` only for the class it saves; list the base model too.
        model.config.auto_map = {"AutoModel": "modeling_sphinx_x.SphinxXModel"}
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if dst.exists():
            if not overwrite:
                raise FileExistsError(f"{dst} appeared during the conversion; nothing was replaced.")
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
