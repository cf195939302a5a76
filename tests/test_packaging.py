"""A regular (non-editable) install ships every module of the repository's package folders and the demo model."""

import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
# Import package -> repository folder, as setup.py maps them.
FOLDERS = {"sphinx_x": "modeling_sphinx_x", "sphinx_x/processors": "processors", "sphinx_x/conversion": "conversion",
           "sphinx_x/training": "training", "sphinx_x/model_cards": "model_cards"}


def test_wheel_install_contains_every_module(tmp_path):
    # An editable install (CI, the README) finds modules that a wheel would leave out, such as a subpackage missing
    # from setup.py's `packages`: `python -m sphinx_x.training.demo.evaluate` then fails for pip users only.
    # Built from a copy of the sources: a `build/` folder left in the checkout would supply stale modules.
    source = tmp_path / "source"
    for folder in FOLDERS.values():
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(tmp_path / "site"), str(source)], check=True, capture_output=True)
    installed = {path.relative_to(tmp_path / "site").as_posix() for path in (tmp_path / "site").rglob("*.py")}
    expected = {
        f"{package}/{path.relative_to(REPO / folder).as_posix()}"
        for package, folder in FOLDERS.items()
        for path in (REPO / folder).rglob("*.py")
    }
    assert sorted(expected - installed) == []
    shipped = REPO / "modeling_sphinx_x" / "demo_model"  # package data: `sphinx-x chat` needs it without --model
    assert {path.name for path in shipped.iterdir()} <= {
        path.name for path in (tmp_path / "site" / "sphinx_x" / "demo_model").iterdir()}
