"""Peak memory of encoding and decoding one large photo, each in its own process.

    python -m tests.measure_large_image --megapixels 50      # docs/robustness.md

The photo is Kodak's kodim23 resized (bicubic) to the size asked for; each step runs as
`dirac` in a fresh process and its peak resident set size comes from the kernel
(wait4's resource usage of that one child), so the figure includes Python, torch and the weights.
Linux carries the parent's peak over into a forked child's, so measure from a small process
(this module's command line), never from one that has run models itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"


def run_measured(arguments: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of `dirac ARGUMENTS` in a new process (that child's own peak)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "diraccodec.cli", *arguments])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"dirac {' '.join(arguments)} failed with status {child.returncode}")
    return seconds, usage.ru_maxrss * 1024


def measure(megapixels: float, quality: float, folder: Path, effort: int | None = None) -> dict[str, float]:
    """Encode (at `dirac encode`'s default effort unless given) in a fresh process."""
    with Image.open(SOURCE) as photo:
        ratio = photo.width / photo.height
        height = round(math.sqrt(megapixels * 1e6 / ratio))
        width = round(height * ratio)
        photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(folder / "large.png",
                                                                                    compress_level=1)
    search = [] if effort is None else ["--effort", str(effort)]
    encode_seconds, encode_peak = run_measured(["encode", str(folder / "large.png"), "-q", str(quality),
                                                "-o", str(folder / "large.drc"), *search])
    return {
        "width": width,
        "height": height,
        "encode_seconds": encode_seconds,
        "encode_peak_bytes": encode_peak,
        "drc_bytes": (folder / "large.drc").stat().st_size,
    }


def measure_decode(folder: Path, steps: int = 0) -> dict[str, float]:
    seconds, peak = run_measured(["decode", str(folder / "large.drc"), "--steps", str(steps),
                                  "-o", str(folder / "decoded.png")])
    with Image.open(folder / "decoded.png") as decoded:
        size = decoded.size
    return {"decode_seconds": seconds, "decode_peak_bytes": peak, "decoded_size": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=50.0)
    parser.add_argument("--quality", type=float, default=3.0)
    parser.add_argument("--effort", type=int, default=None, help="Encoder effort (default: dirac's).")
    parser.add_argument("--steps", type=int, default=0, help="Diffusion steps of the decode.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        encoded = measure(args.megapixels, args.quality, Path(folder), args.effort)
        decoded = measure_decode(Path(folder), args.steps)
    figures = {**encoded, **decoded}
    if args.json:
        args.json.write_text(json.dumps(figures))
    pixels = figures["width"] * figures["height"]
    print(f"image {figures['width']}x{figures['height']} ({pixels / 1e6:.1f} MP), -q {args.quality}")
    print(f"encode: {figures['encode_seconds']:.1f} s, peak RSS {figures['encode_peak_bytes'] / 2**30:.2f} GiB "
          f"({figures['encode_peak_bytes'] / pixels:.1f} B/pixel)")
    print(f"decode: {figures['decode_seconds']:.1f} s, peak RSS {figures['decode_peak_bytes'] / 2**30:.2f} GiB "
          f"({figures['decode_peak_bytes'] / pixels:.1f} B/pixel), output {figures['decoded_size']}")
    print(f"file: {figures['drc_bytes']} bytes, {8 * figures['drc_bytes'] / pixels:.4f} bpp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
