"""The whole GPU check in one run of a few minutes: cross-device pixels, speed and memory.

    python scripts/gpu_check.py --data path/to/kodak --output results/   # on a machine with CUDA

The sections run in this order, the most wanted figures first, and the report is written
again after each one, so a run stopped by `--minutes` or killed from outside keeps what it
finished:

1. Speed, mean per image over the folder: encode at the default effort, decode at 0 and 20
   steps (the first image is a warm-up, left out). Then where the time of one encode and one
   20-step decode goes: torch's profiler (CPU and device time, kernel launches) and Python's
   (our functions), into gpu-profile.txt.
2. Files encoded on the CPU and on the GPU: their latent symbols decoded on both devices must
   be identical, and the pixels of both devices' decodes within the tolerance of
   docs/format.md (0 and 20 steps).
3. A 12-megapixel photo (4032x3024) at 20 steps: seconds and peak GPU memory.
4. On CUDA, 20 steps with the sampler's steps replayed from CUDA graphs ($DIRAC_CUDA_GRAPHS=1),
   and how far their pixels lie from the decodes without.
5. A 50-megapixel photo at 0 steps and at 1 (whose memory any step count has): seconds and
   peak GPU memory.

Large photos are encoded at effort 1: their decode is what is measured. With `--minutes`, a
section not begun by then is skipped and a loop over images stops where the time runs out;
the report names what was left out. It writes gpu-check.json and gpu-check.md into --output
and exits 1 when a conformance check fails. `--device cpu --images 1 --large-megapixels`
runs it quickly anywhere (its own test).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import patch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a GPU machine runs the checkout without installing it
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import diraccodec  # noqa: E402
from diraccodec import api  # noqa: E402
from diraccodec.compute import CUDA_GRAPHS_ENV, cpu_description, profile_totals  # noqa: E402
from diraccodec.container import drc  # noqa: E402
from diraccodec.image.planes import IMAGE_SUFFIXES  # noqa: E402

# docs/format.md, "Conformance": a decoder's pixels against the reference decoder's
TOLERANCE = {0: (2, 0.01), 20: (8, 0.5)}  # steps -> (largest difference, mean difference or share differing)
LEVEL = 4


class Clock:
    """The run's time budget: sections and loops ask it before they begin the next piece."""

    def __init__(self, minutes: float | None) -> None:
        self.end = None if minutes is None else time.monotonic() + 60 * minutes
        self.left_out: list[str] = []

    def allows(self, what: str) -> bool:
        if self.end is not None and time.monotonic() >= self.end:
            self.left_out.append(what)
            return False
        return True

    def each(self, items: list, what: str) -> Iterator:
        """The items, while time is left; what was cut is recorded as `what` with the count done."""
        for done, item in enumerate(items):
            if not self.allows(f"{what} after {done} of {len(items)}"):
                return
            yield item


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


def mean_after_warm_up(times: list[float]) -> float | None:
    return statistics.mean(times[1:]) if len(times) > 1 else None


def speed(images: list[Image.Image], device: str, clock: Clock) -> tuple[dict, list[bytes]]:
    """Mean seconds per image: encode at the default effort, decode at 0 and at 20 steps; and
    the files, for the later sections."""
    times: dict[str, list[float]] = {"encode": [], "decode 0 steps": [], "decode 20 steps": []}
    files = []
    for image in clock.each([images[0], *images], "speed"):  # the first round warms up
        seconds, data = timed(device, lambda image=image: diraccodec.encode(image, LEVEL, device=device))
        zero, _ = timed(device, lambda data=data: diraccodec.decode(data, 0, device=device))
        twenty, _ = timed(device, lambda data=data: diraccodec.decode(data, 20, device=device))
        for name, value in zip(times, (seconds, zero, twenty), strict=True):
            times[name].append(value)
        files.append(data)
    report = {name: mean_after_warm_up(values) for name, values in times.items()}
    return {**report, "images": max(len(files) - 1, 0)}, files[1:]


def where_time_goes(image: Image.Image, device: str, output: Path) -> dict:
    """One encode and one 20-step decode under torch's profiler and then Python's: totals in the
    report, the tables in gpu-profile.txt (the profilers slow both down; read shares, not times)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    work = {"encode": lambda: diraccodec.encode(image, LEVEL, device=device)}
    data = work["encode"]()
    work["decode 20 steps"] = lambda: diraccodec.decode(data, 20, device=device)
    summary, text = {}, []
    for name, function in work.items():
        with profile(activities=activities) as profiler:
            seconds, _ = timed(device, function)
        events = profiler.key_averages()
        summary[name] = {"seconds": seconds, **profile_totals(events)}
        for order in ("self_device_time_total", "self_cpu_time_total"):
            text += [f"# {name}: torch's profiler, by {order}", events.table(sort_by=order, row_limit=25)]
        python = cProfile.Profile()
        python.runcall(function)
        stream = io.StringIO()
        pstats.Stats(python, stream=stream).sort_stats("tottime").print_stats(25)
        text += [f"# {name}: Python's profiler, by own time", stream.getvalue()]
    (output / "gpu-profile.txt").write_text("\n\n".join(text))
    return summary


def cross_device(images: list[Image.Image], devices: tuple[str, str], clock: Clock) -> list[dict]:
    """Each image encoded on each device and decoded on both: symbols and pixels compared."""
    rows = []
    for index, image in enumerate(clock.each(images, "cross-device images")):
        encoded = [diraccodec.encode(image, LEVEL, device=device) for device in devices]
        for source, data in zip(devices, encoded, strict=True):
            header = drc.unpack(data)
            streams = [api.get_codec(None, api.compute_for(device)).read_stream(
                header.sections[drc.TAG_LATENTS], header.width, header.height, header.quality)
                for device in devices]
            same_symbols = bool(np.array_equal(streams[0].symbols, streams[1].symbols)
                                and np.array_equal(streams[0].hyper, streams[1].hyper))
            # the fixed-point hyper-synthesis ran on each device: its tables and means agree to the bit
            same_parameters = bool(np.array_equal(streams[0].table_ids, streams[1].table_ids)
                                   and torch.equal(streams[0].mean, streams[1].mean))
            for steps in TOLERANCE:
                first, second = (pixels(diraccodec.decode(data, steps, device=device)) for device in devices)
                difference = np.abs(first - second)
                largest, bound = TOLERANCE[steps]
                measure = float(np.mean(difference != 0)) if steps == 0 else float(difference.mean())
                within = bool(same_symbols and same_parameters and difference.max() <= largest and measure <= bound)
                rows.append({"image": index, "encoded on": source, "steps": steps, "symbols identical": same_symbols,
                             "entropy parameters identical": same_parameters,
                             "largest difference": int(difference.max()), "mean difference": float(difference.mean()),
                             "share differing": float(np.mean(difference != 0)), "within tolerance": within})
        again = diraccodec.encode(image, LEVEL, device=devices[1])  # the device's kernels may sum in another order
        rows.append({"image": index, "bytes identical": encoded[0] == encoded[1],
                     "bytes": [len(data) for data in encoded], "repeat on the device identical": again == encoded[1]})
    return rows


def with_cuda_graphs(files: list[bytes], device: str, clock: Clock) -> dict:
    """20-step decodes with the sampler's steps replayed from CUDA graphs: mean seconds, and how
    far their pixels lie from the same decodes without (the same kernels: expected identical)."""
    plain = [pixels(diraccodec.decode(data, 20, device=device)) for data in files[:3]]
    times = []
    with patch.dict(os.environ, {CUDA_GRAPHS_ENV: "1"}):  # GraphReplay meanwhile
        for data in clock.each([files[0], *files], "CUDA graph decodes"):  # the first round warms up
            times.append(timed(device, lambda data=data: diraccodec.decode(data, 20, device=device))[0])
        replayed = [pixels(diraccodec.decode(data, 20, device=device)) for data in files[:3]]
    largest = max(int(np.abs(a - b).max()) for a, b in zip(plain, replayed, strict=True))
    return {"decode 20 steps": mean_after_warm_up(times), "images": max(len(times) - 1, 0),
            "largest difference from without": largest}


def large(photo: Image.Image, megapixels: float, steps: tuple[int, ...], device: str) -> list[dict]:
    """Encode (effort 1) a photo scaled to `megapixels` (4:3) and decode it at each step count:
    seconds and peak GPU memory of each decode."""
    height = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    image = photo.resize((height * 4 // 3, height), Image.Resampling.BICUBIC)
    data = diraccodec.encode(image, LEVEL, effort=1, device=device)
    rows = []
    for count in steps:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, _ = timed(device, lambda count=count: diraccodec.decode(data, count, device=device))
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        rows.append({"size": f"{image.width}x{image.height}", "steps": count, "decode seconds": seconds,
                     "peak GPU memory GiB": peak})
    return rows


def seconds_text(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f} s"


def markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}`", "", f"Device: {report['device']}, torch {report['torch']}", ""]
    if "speed" in report:
        speed_report = report["speed"]
        lines += [f"## Speed (mean per image over {speed_report['images']})", ""]
        lines += [f"- {name}: {seconds_text(speed_report[name])}" for name in speed_report if name != "images"]
    for name, totals in report.get("profile", {}).items():
        lines += [f"- profiled {name}: " + ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else
                                                       f"{key} {value}" for key, value in totals.items())]
    if report.get("cuda graphs"):
        graphs = report["cuda graphs"]
        lines += [f"- decode 20 steps with CUDA graphs, over {graphs['images']}: "
                  f"{seconds_text(graphs['decode 20 steps'])} (largest pixel difference from without: "
                  f"{graphs['largest difference from without']})"]
    if report.get("large"):
        lines += ["", "## Large photos", ""]
        lines += [f"- {row['size']}, {row['steps']} steps: {row['decode seconds']:.2f} s, "
                  f"peak GPU memory {row['peak GPU memory GiB']:.2f} GiB" for row in report["large"]]
    if "cross device" in report:
        verdict = "not checked" if report["conformant"] is None else report["conformant"]
        lines += ["", "## Cross-device conformance", "", f"All within tolerance: {verdict}", ""]
        lines += [f"- {json.dumps(row)}" for row in report["cross device"]]
    if report["left out"]:
        lines += ["", "## Left out by the time limit", ""] + [f"- {what}" for what in report["left out"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Folder of test images (Kodak).")
    parser.add_argument("--images", type=int, default=24, help="How many of them to time.")
    parser.add_argument("--cross-images", type=int, default=3, help="How many to check across devices.")
    parser.add_argument("--device", default="cuda", help="The device under test (cuda; cpu to try the script).")
    parser.add_argument("--large-megapixels", type=float, nargs="*", default=[12.0, 50.0],
                        help="Sizes of the large-photo runs (up to 12 MP at 20 steps, larger at 0 and 1); none: skip.")
    parser.add_argument("--minutes", type=float, default=None,
                        help="Time budget: begin nothing after it (default: none).")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    clock = Clock(args.minutes)
    paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.images]
    images = [Image.open(path).convert("RGB") for path in paths]
    report: dict = {
        "command": " ".join(["python", *sys.argv]),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "cpu": cpu_description(),  # it runs the entropy coding and the CPU half of the cross checks
        "torch": torch.__version__,
        "left out": clock.left_out,
    }
    args.output.mkdir(parents=True, exist_ok=True)

    def write(section: str) -> None:
        rows = [row for row in report.get("cross device", []) if "within tolerance" in row]
        report["conformant"] = all(row["within tolerance"] for row in rows) if rows else None  # None: unchecked
        (args.output / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.output / "gpu-check.md").write_text(markdown(report))
        print(f"gpu-check: {section} written", flush=True)

    report["speed"], files = speed(images, args.device, clock)
    write("speed")
    if images and clock.allows("profile"):
        try:
            report["profile"] = where_time_goes(images[0], args.device, args.output)
        except Exception as error:  # a profiler fault costs its section, not the check
            report["profile"] = {"failed": {"error": str(error)}}
        write("profile")
    report["cross device"] = cross_device(images[: args.cross_images], ("cpu", args.device), clock)
    write("cross device")
    sizes = [megapixels for megapixels in args.large_megapixels if megapixels > 0]
    report["large"] = []
    for megapixels in (size for size in sizes if size <= 12):
        if clock.allows(f"{megapixels:g} MP photo"):
            report["large"] += large(images[0], megapixels, (20,), args.device)
            write(f"{megapixels:g} MP")
    if args.device == "cuda" and files and clock.allows("CUDA graph decodes"):
        report["cuda graphs"] = with_cuda_graphs(files, args.device, clock)
        write("CUDA graphs")
    for megapixels in (size for size in sizes if size > 12):
        if clock.allows(f"{megapixels:g} MP photo"):
            report["large"] += large(images[0], megapixels, (0, 1), args.device)
            write(f"{megapixels:g} MP")
    write("report")
    print(markdown(report))
    return 1 if report["conformant"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
