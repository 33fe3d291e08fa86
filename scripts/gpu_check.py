"""The whole GPU check in one run of a few minutes: cross-device pixels, speed and memory.

    python scripts/gpu_check.py --data path/to/kodak --output results/   # on a machine with CUDA

1. Files encoded on the CPU and on the GPU: their latent symbols decoded on both devices must
   be identical, and the pixels of both devices' decodes within the tolerance of
   docs/format.md (0 and 20 steps).
2. Speed, mean per image over the folder: encode at the default effort, decode at 0 and 20
   steps (the first image of each kind is a warm-up, left out); on CUDA also 20 steps with
   the sampler's steps replayed from CUDA graphs ($DIRAC_CUDA_GRAPHS=1), and how far their
   pixels lie from the decodes without.
3. A 12-megapixel photo (4032x3024) at 20 steps and a 50-megapixel one at 0 steps: seconds
   and peak GPU memory.

It writes gpu-check.json and gpu-check.md into --output and exits 1 when a conformance check
fails. `--device cpu --images 1 --large-megapixels 0` runs it quickly anywhere (its own test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest.mock import patch

import numpy as np
import torch
from PIL import Image

import diraccodec
from diraccodec import api
from diraccodec.compute import CUDA_GRAPHS_ENV
from diraccodec.container import drc
from diraccodec.image.planes import IMAGE_SUFFIXES

# docs/format.md, "Conformance": a decoder's pixels against the reference decoder's
TOLERANCE = {0: (2, 0.01), 20: (8, 0.5)}  # steps -> (largest difference, mean difference or share differing)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, function: Callable[[], object]) -> tuple[float, object]:
    synchronize(device)
    started = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - started, result


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def cross_device(images: list[Image.Image], devices: tuple[str, str]) -> list[dict]:
    """Each image encoded on each device and decoded on both: symbols and pixels compared."""
    rows = []
    for index, image in enumerate(images):
        for source in devices:
            data = diraccodec.encode(image, 4, device=source)
            header = drc.unpack(data)
            streams = [api.get_codec(None, api.compute_for(device)).read_stream(
                header.sections[drc.TAG_LATENTS], header.width, header.height) for device in devices]
            same_symbols = bool(np.array_equal(streams[0].symbols, streams[1].symbols)
                                and np.array_equal(streams[0].hyper, streams[1].hyper))
            for steps in TOLERANCE:
                first, second = (pixels(diraccodec.decode(data, steps, device=device)) for device in devices)
                difference = np.abs(first - second)
                largest, bound = TOLERANCE[steps]
                measure = float(np.mean(difference != 0)) if steps == 0 else float(difference.mean())
                within = bool(same_symbols and difference.max() <= largest and measure <= bound)
                rows.append({"image": index, "encoded on": source, "steps": steps, "symbols identical": same_symbols,
                             "largest difference": int(difference.max()), "mean difference": float(difference.mean()),
                             "share differing": float(np.mean(difference != 0)), "within tolerance": within})
        encoded = [diraccodec.encode(image, 4, device=device) for device in devices]
        rows.append({"image": index, "bytes identical": encoded[0] == encoded[1],
                     "bytes": [len(data) for data in encoded]})
    return rows


def speed(images: list[Image.Image], device: str) -> dict[str, float]:
    """Mean seconds per image: encode at the default effort, decode at 0 and at 20 steps."""
    times: dict[str, list[float]] = {"encode": [], "decode 0 steps": [], "decode 20 steps": []}
    for index, image in enumerate([images[0], *images]):  # the first round warms up
        seconds, data = timed(device, lambda image=image: diraccodec.encode(image, 4, device=device))
        zero, _ = timed(device, lambda data=data: diraccodec.decode(data, 0, device=device))
        twenty, _ = timed(device, lambda data=data: diraccodec.decode(data, 20, device=device))
        if index:
            for name, value in zip(times, (seconds, zero, twenty), strict=True):
                times[name].append(value)
    return {name: statistics.mean(values) for name, values in times.items()}


def with_cuda_graphs(images: list[Image.Image], device: str) -> dict[str, float]:
    """20-step decodes with the sampler's steps replayed from CUDA graphs: mean seconds, and how
    far their pixels lie from the same decodes without (the same kernels: expected identical)."""
    files = [diraccodec.encode(image, 4, device=device) for image in images]
    plain = [pixels(diraccodec.decode(data, 20, device=device)) for data in files[:3]]
    times = []
    with patch.dict(os.environ, {CUDA_GRAPHS_ENV: "1"}):  # GraphReplay meanwhile
        for index, data in enumerate([files[0], *files]):  # the first round warms up
            seconds, _ = timed(device, lambda data=data: diraccodec.decode(data, 20, device=device))
            if index:
                times.append(seconds)
        replayed = [pixels(diraccodec.decode(data, 20, device=device)) for data in files[:3]]
    largest = max(int(np.abs(a - b).max()) for a, b in zip(plain, replayed, strict=True))
    return {"decode 20 steps": statistics.mean(times), "largest difference from without": largest}


def large(photo: Image.Image, megapixels: float, steps: int, device: str) -> dict[str, float]:
    """Encode and decode a photo scaled to `megapixels` (4:3): seconds and peak GPU memory."""
    height = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    image = photo.resize((height * 4 // 3, height), Image.Resampling.BICUBIC)
    data = diraccodec.encode(image, 4, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, _ = timed(device, lambda: diraccodec.decode(data, steps, device=device))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"size": f"{image.width}x{image.height}", "steps": steps, "decode seconds": seconds,
            "peak GPU memory GiB": peak}


def markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}`", "", f"Device: {report['device']}", "", "## Speed (mean per image)", ""]
    lines += [f"- {name}: {value:.4f} s" for name, value in report["speed"].items()]
    if report.get("cuda graphs"):
        graphs = report["cuda graphs"]
        lines += [f"- decode 20 steps with CUDA graphs: {graphs['decode 20 steps']:.4f} s (largest pixel "
                  f"difference from without: {graphs['largest difference from without']})"]
    lines += ["", "## Large photos", ""]
    lines += [f"- {row['size']}, {row['steps']} steps: {row['decode seconds']:.2f} s, "
              f"peak GPU memory {row['peak GPU memory GiB']:.2f} GiB" for row in report["large"]]
    lines += ["", "## Cross-device conformance", "", f"All within tolerance: {report['conformant']}", ""]
    lines += [f"- {json.dumps(row)}" for row in report["cross device"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Folder of test images (Kodak).")
    parser.add_argument("--images", type=int, default=24, help="How many of them to time.")
    parser.add_argument("--cross-images", type=int, default=3, help="How many to check across devices.")
    parser.add_argument("--device", default="cuda", help="The device under test (cuda; cpu to try the script).")
    parser.add_argument("--large-megapixels", type=float, nargs="*", default=[12.0, 50.0],
                        help="Sizes of the large-photo runs (12 MP at 20 steps, others at 0); none: skip.")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.images]
    images = [Image.open(path).convert("RGB") for path in paths]
    devices = ("cpu", args.device)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "speed": speed(images, args.device),
        "cuda graphs": with_cuda_graphs(images, args.device) if args.device == "cuda" else None,
        "large": [large(images[0], megapixels, 20 if megapixels <= 12 else 0, args.device)
                  for megapixels in args.large_megapixels if megapixels > 0],
        "cross device": cross_device(images[: args.cross_images], devices),
    }
    report["conformant"] = all(row.get("within tolerance", True) for row in report["cross device"])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.output / "gpu-check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["conformant"] else 1


if __name__ == "__main__":
    sys.exit(main())
