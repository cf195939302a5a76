"""A regular (non-editable) install ships every module of the repository's package folders and the demo model."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def setup_folders() -> dict[str, str]:
    """setup.py's `FOLDERS` (import package -> repository folder), read without running `setup()`."""
    tree = ast.parse((REPO / "setup.py").read_text())
    assignment = next(node for node in tree.body if isinstance(node, ast.Assign) and node.targets[0].id == "FOLDERS")
    return ast.literal_eval(assignment.value)


def test_wheel_install_contains_every_module(tmp_path):
    # An editable install (CI, the README) finds modules that a wheel would leave out, such as a subpackage missing
    # from setup.py's `packages`: `python -m sphinx_x.training.demo.evaluate` then fails for pip users only.
    # Built from a copy of the sources: a `build/` folder left in the checkout would supply stale modules.
    folders = setup_folders()
    source = tmp_path / "source"
    for folder in folders.values():
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(tmp_path / "site"), str(source)], check=True, capture_output=True)
    installed = {path.relative_to(tmp_path / "site").as_posix() for path in (tmp_path / "site").rglob("*.py")}
    expected = {
        f"{package.replace('.', '/')}/{path.relative_to(REPO / folder).as_posix()}"
        for package, folder in folders.items()
        for path in (REPO / folder).rglob("*.py")
    }
    assert sorted(expected - installed) == []
    shipped = REPO / "modeling_sphinx_x" / "demo_model"  # package data: `sphinx-x chat` needs it without --model
    assert {path.name for path in shipped.iterdir()} <= {
        path.name for path in (tmp_path / "site" / "sphinx_x" / "demo_model").iterdir()}
