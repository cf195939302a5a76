"""Pieces shared by the converters: their error type, JSON reading and the atomic writing of a model folder."""

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class ConversionError(ValueError):
    """A checkpoint or an argument that cannot be converted; the message names the problem and the fix."""


def read_json(path: Path, when_missing: str) -> dict:
    """The JSON object in `path`; a missing, unreadable or non-object file is a `ConversionError`.

    `when_missing` ends the message for a missing file, e.g. "an Accessory checkpoint has one."
    """
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path.name} is missing from {path.parent}; {when_missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(content, dict):
        raise ConversionError(f"{path} does not hold a JSON object.")
    return content


@contextlib.contextmanager
def atomic_output_folder(dst: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `dst` to write into; on success it becomes `dst`, on any error it is removed.

    An interrupted or failed conversion leaves `dst` as it was. With `overwrite`, an existing `dst` is moved aside
    and deleted only once the new folder is in place.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        if dst.exists():
            if not overwrite:
                raise FileExistsError(f"{dst} appeared during the conversion; nothing was replaced.")
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
            dst.rename(old / dst.name)
            try:
                tmp.rename(dst)
            except BaseException:
                (old / dst.name).rename(dst)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model_folder(model, processor, dst: Path, *, overwrite: bool = False) -> Path:
    """Save model, processor, generation config and remote code to a temporary sibling of `dst`, then rename it."""
    with atomic_output_folder(dst, overwrite=overwrite) as tmp:
        # `save_pretrained` writes `auto_map` only for the class it saves; list the base model too.
        model.config.auto_map = {"AutoModel": "modeling_sphinx_x.SphinxXModel"}
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(dst)
