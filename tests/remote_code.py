"""Run a script in a fresh Python process that cannot import `sphinx_x`: what a Hub user without the package has."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path


BLOCK_SPHINX_X = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockSphinx(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "sphinx_x" or name.startswith("sphinx_x."):
                raise ImportError("sphinx_x is not installed in this process")

    sys.meta_path.insert(0, BlockSphinx())
    """
)


def run_without_sphinx_x(script: str, *args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` with `args` in `sys.argv[1:]`, offline, with its own remote-code cache; fail on a non-zero exit."""
    env = {**os.environ, "HF_MODULES_CACHE": str(Path(cwd) / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_SPHINX_X + textwrap.dedent(script), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
