"""transformers' own common model tests, taken at test time from the transformers source distribution on PyPI (the
version installed, checked by SHA-256) and cached; nothing of transformers' test code is committed here.

`test_modeling_common.py` imports two mixins from files the sdist does not ship (`ExportTesterMixin`,
`GenerationTesterMixin`); those imports are pointed to the empty stand-ins of `unavailable.py`, so their tests do not
run and nothing passes in their place.
"""

import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers


# sdist SHA-256 per transformers version (setup.py pins 5.24.*; add a line when the pin moves).
SDIST_SHA256 = {"5.24.0": "906cb8c3cb2123575e263962586a4d21a979ce97feeb95fe6aaf66fe6ae88bf3"}
UNAVAILABLE = {
    "from .exporters.test_export import ExportTesterMixin": "from .unavailable import ExportTesterMixin",
    "from .generation.test_utils import GenerationTesterMixin": "from .unavailable import GenerationTesterMixin",
}
CACHE = Path(os.environ.get("SPHINX_X_TEST_CACHE", Path.home() / ".cache" / "sphinx-x" / "transformers-tests"))


def sdist_test_file(name: str, version: str = transformers.__version__) -> str:
    """The text of `tests/<name>` in transformers' sdist of `version`, downloaded once with pip."""
    if version not in SDIST_SHA256:
        raise RuntimeError(f"No known sdist hash for transformers {version}: add it to SDIST_SHA256 in {__file__}.")
    cached = CACHE / version / name
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   f"transformers=={version}", "--dest", folder]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"Cannot download transformers {version}'s sdist from PyPI for its common tests "
                               f"({' '.join(command)}): {run.stderr.strip()[-500:]}")
        archive = next(Path(folder).glob("transformers-*.tar.gz"))
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256[version]:
            raise RuntimeError(f"{archive.name} has SHA-256 {digest}, expected {SDIST_SHA256[version]}.")
        with tarfile.open(archive) as tar:
            text = tar.extractfile(f"transformers-{version}/tests/{name}").read().decode("utf-8")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(cached)
    return text


def load_test_modeling_common():
    """transformers' `tests/test_modeling_common.py` as the module `transformers_common.test_modeling_common`."""
    name = f"{__name__}.test_modeling_common"
    if name in sys.modules:
        return sys.modules[name]
    text = sdist_test_file("test_modeling_common.py")
    for original, stand_in in UNAVAILABLE.items():
        if original not in text:
            raise RuntimeError(f"transformers' test_modeling_common.py no longer has {original!r}: update UNAVAILABLE.")
        text = text.replace(original, stand_in)
    path = CACHE / transformers.__version__ / "test_modeling_common_sphinx_x.py"
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = __name__  # its relative imports resolve here (`.unavailable`)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
