"""Extra memory and time of the image processor on extreme aspect ratios (target: < 200 MB extra each).

Each case runs in a fresh child process: it builds a noise strip of the given size, encodes it as PNG, opens it with
`load_image` (decoded, as the processor receives it), resets the peak resident memory (`/proc/self/clear_refs`), then
runs the full `SphinxXImageProcessor` (2x2 grid of 512-px tiles, the SPHINX-X canvas) and reads the new peak
(`VmHWM`). "extra" is that peak minus the resident memory just before processing. Before the canvas was computed in
bands, a 20000x10 strip was first padded to a 20000x20000 frame (1.6 GB) and a 60000x10 strip raised `MemoryError`;
`--padded-frame` measures that old way for comparison (only for sizes whose frame fits in memory).

    python benchmarks/extreme_aspect_memory.py
    python benchmarks/extreme_aspect_memory.py --sizes 20000x10 --padded-frame
"""

import argparse
import subprocess
import sys


CHILD = """
import io, sys, time
import numpy as np, PIL.Image
from sphinx_x import SphinxXImageProcessor
from sphinx_x.processors.image_processing_sphinx_x import PADDING_COLOR, load_image, to_rgb

width, height, placement, padded = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
buffer = io.BytesIO()
PIL.Image.fromarray(noise).save(buffer, "PNG")
del noise
image = to_rgb(load_image(buffer.getvalue()))
processor = SphinxXImageProcessor(skip_padded_tiles=placement == "top-left")


def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":")) / 1024


with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset VmHWM to the current resident size
before = status("VmRSS")
start = time.perf_counter()
if padded:  # the old way: materialise the padded frame, then one resize
    side = max(image.size)
    frame = PIL.Image.new("RGB", (side, side), PADDING_COLOR)
    frame.paste(image, (0, 0))
    canvas = frame.resize((1024, 1024), PIL.Image.BICUBIC)
else:
    out = processor(image)
    assert out["pixel_values"].shape == (1, 3, 1024, 1024)
seconds = time.perf_counter() - start
print(f"{width}x{height} {placement:8s} {'padded frame' if padded else 'banded':12s} "
      f"extra {status('VmHWM') - before:7.1f} MB  time {seconds:6.2f} s  (PNG {len(buffer.getvalue())} bytes)")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["20000x10", "60000x10", "10x60000", "640x320"])
    parser.add_argument("--padded-frame", action="store_true", help="also measure the old padded-frame resize")
    args = parser.parse_args()
    for size in args.sizes:
        width, height = size.split("x")
        for placement in ("top-left", "centred"):
            for padded in (False, True) if args.padded_frame else (False,):
                subprocess.run([sys.executable, "-c", CHILD, width, height, placement, "1" if padded else "0"],
                               check=True)


if __name__ == "__main__":
    main()
