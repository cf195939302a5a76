"""The `sphinx-x` console script, started without importing `sphinx_x`.

`import sphinx_x` loads torch and transformers and registers the model with the Auto classes, which takes seconds.
The command line (`sphinx_x/cli.py`) imports nothing heavy at its top, so this entry point loads that one file from the
installed package folder without running the package's `__init__`; each command then imports what it needs, which
imports the package the usual way. `sphinx-x --help` and argument errors are thus instant.
"""

import importlib.util
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    cli = sys.modules.get("sphinx_x.cli")
    if cli is None:
        package = importlib.util.find_spec("sphinx_x")  # finds the package folder; imports nothing
        spec = importlib.util.spec_from_file_location(
            "sphinx_x.cli", Path(package.submodule_search_locations[0]) / "cli.py"
        )
        cli = importlib.util.module_from_spec(spec)
        cli.__package__ = "sphinx_x"  # the commands' relative imports load the package when they run
        sys.modules["sphinx_x.cli"] = cli
        spec.loader.exec_module(cli)
    return cli.main(argv)
