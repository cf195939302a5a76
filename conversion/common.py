"""Pieces shared by the converters: their error type, JSON reading and the atomic writing of a model folder."""

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
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


# Every temporary folder of a writer holds this file with the writer's process id, so that a later run can tell the
# leftovers of a killed writer (SIGKILL, power loss) from the folder of a writer still at work.
OWNER_FILE = ".sphinx-x-writer"


def check_finite(name: str, tensor, source) -> None:
    """A NaN or infinite weight (a torch tensor) -> `ConversionError` naming the tensor and where it came from."""
    if tensor.is_floating_point() and not tensor.isfinite().all():
        bad = int((~tensor.isfinite()).sum())
        raise ConversionError(
            f"{name} holds {bad} NaN or infinite values (from {source}): the source weights are corrupt. "
            "Re-download or re-export them; nothing was written."
        )


def claim_folder(folder: Path) -> Path:
    (folder / OWNER_FILE).write_text(str(os.getpid()))
    return folder


def remove_stale_folders(dst: Path) -> list[Path]:
    """Remove the temporary siblings (`.{dst.name}.*`) that earlier writers of `dst` left when they were killed;
    returns them. A folder whose writer still runs is kept."""
    removed = []
    for candidate in dst.parent.glob(f".{dst.name}.*"):
        owner = candidate / OWNER_FILE
        if not candidate.is_dir() or not owner.is_file():
            continue
        try:
            pid = int(owner.read_text())
            os.kill(pid, 0)  # raises if no such process
            continue
        except ProcessLookupError:
            pass
        except (ValueError, OSError):
            continue  # unreadable marker, or a live process of another user: not ours to remove
        previous = candidate / dst.name  # a run killed while it swapped folders: the old `dst` is still inside
        if candidate.name.startswith(f".{dst.name}.old.") and previous.is_dir() and not dst.exists():
            previous.rename(dst)
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a `kill`, a job scheduler's stop) raises `KeyboardInterrupt` like SIGINT, so that
    the cleanup that runs for Ctrl-C also runs for it. Only the main thread can install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_output_folder(dst: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `dst` to write into; on success it becomes `dst`, on any error it is removed.

    An interrupted (SIGINT or SIGTERM) or failed conversion leaves `dst` as it was. With `overwrite`, an existing
    `dst` is moved aside and deleted only once the new folder is in place. Temporary folders left by killed earlier
    runs (SIGKILL) are removed first.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(dst)
    with terminate_as_interrupt():
        tmp = claim_folder(Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent)))
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        try:
            yield tmp
            (tmp / OWNER_FILE).unlink()
            if dst.exists():
                if not overwrite:
                    raise FileExistsError(f"{dst} appeared during the conversion; nothing was replaced.")
                if os.path.ismount(dst):
                    raise ConversionError(
                        f"{dst} is a mount point, which cannot be replaced; write to a folder inside it or beside it."
                    )
                old = claim_folder(Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent)))
                try:
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


def write_model_folder(model, processor, dst: Path, *, overwrite: bool = False, verify: bool = False) -> Path:
    """Save model, processor, generation config and remote code to a temporary sibling of `dst`, then rename it.

    Non-finite weights are refused before anything is written; `verify` reloads the folder and runs a forward pass and
    a short generation before it is renamed into place."""
    for name, tensor in model.state_dict().items():
        check_finite(name, tensor, "the assembled parts")
    with atomic_output_folder(dst, overwrite=overwrite) as tmp:
        # `save_pretrained` writes `auto_map` only for the class it saves; list the base model too.
        model.config.auto_map = {"AutoModel": "modeling_sphinx_x.SphinxXModel"}
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if verify:
            from .accessory import verify_model_folder

            verify_model_folder(tmp, model.dtype)
    return Path(dst)
