"""Startup time of the `sphinx-x` console script (target: `sphinx-x --help` under 2 s).

Runs each command line `--repeat` times in a fresh process and prints the median and worst wall time. For contrast it
also times `python -c "import sphinx_x"`, which loads torch and transformers: what every `--help` paid before the
command line was loaded without the package.

    python benchmarks/cli_startup.py
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def timed(command: list[str], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    script = shutil.which("sphinx-x")
    if script is None:
        sys.exit("sphinx-x is not on PATH: pip install -e . first")
    for command in (["--help"], ["chat", "--help"], ["convert", "assemble", "--help"], ["train", "--help"]):
        median, worst = timed([script, *command], args.repeat)
        print(f"sphinx-x {' '.join(command):28s} median {median:5.2f} s  worst {worst:5.2f} s")
    median, worst = timed([sys.executable, "-c", "import sphinx_x"], max(1, args.repeat // 2))
    label = 'python -c "import sphinx_x"'
    print(f"{label:37s} median {median:5.2f} s  worst {worst:5.2f} s")


if __name__ == "__main__":
    main()
