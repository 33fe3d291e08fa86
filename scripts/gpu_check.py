"""The whole GPU check in one run of a few minutes: cross-device pixels, speed and memory.

    python scripts/gpu_check.py --data path/to/kodak --output results/   # on a machine with CUDA

The sections run in this order, the most wanted figures first, and the report is written
again after each image and each section, so a run stopped by `--minutes` or killed from
outside keeps what it finished:

1. Speed, mean per image over the folder: encode at the default effort, decode at 0 and 20
   steps (the first image is a warm-up, left out). Then where the time of one encode and one
   20-step decode goes: torch's profiler (CPU and device time, kernel launches) and Python's
   (our functions), into gpu-profile.txt.
2. Files encoded on the CPU and on the GPU: their latent symbols decoded on both devices must
   be identical, and the pixels of the GPU's decodes and of the CPU's fast mode within the
   tolerance of docs/format.md of the reference decoder's (the CPU's exact mode), at 0 and 20
   steps.
3. A 12-megapixel photo (4032x3024) at 20 steps: seconds and peak GPU memory.
4. On CUDA, 20 steps with the sampler's steps replayed from CUDA graphs ($DIRAC_CUDA_GRAPHS=1),
   and how far their pixels lie from the decodes without.
5. A 50-megapixel photo at 0 steps and at 1 (whose memory any step count has): seconds and
   peak GPU memory; begun only with `--large-reserve` seconds of the budget left.

Large photos are encoded at effort 1: their decode is what is measured. With `--minutes`, a
section not begun by then is skipped and a loop over images stops where the time runs out;
the report names what was left out. A section that fails (out of memory, say) is recorded
with its error and the next one runs. It writes gpu-check.json and gpu-check.md into
--output and exits 1 when a conformance check fails, else 3 when a section failed, else 0.
`--device cpu --images 1 --large-megapixels` runs it quickly anywhere (its own test).
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
import warnings
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
from diraccodec.bench import fastest  # noqa: E402
from diraccodec.compute import CUDA_GRAPHS_ENV, cpu_description, profile_totals  # noqa: E402
from diraccodec.container import drc  # noqa: E402
from diraccodec.diffusion import sampler  # noqa: E402
from diraccodec.image.planes import images_in  # noqa: E402

# docs/format.md, "Conformance": a decoder's pixels against the reference decoder's
TOLERANCE = {0: (2, 0.01), 20: (8, 0.5)}  # steps -> (largest difference, mean difference or share differing)
LEVEL = 4


class Clock:
    """The run's time budget: sections and loops ask it before they begin the next piece."""

    def __init__(self, minutes: float | None) -> None:
        self.end = None if minutes is None else time.monotonic() + 60 * minutes
        self.left_out: list[str] = []

    def allows(self, what: str, seconds_needed: float = 0.0) -> bool:
        """Whether `what` may begin: the budget is not spent, and has `seconds_needed` left."""
        if self.end is not None and time.monotonic() + seconds_needed >= self.end:
            self.left_out.append(what)
            return False
        return True

    def each(self, items: list, what: str) -> Iterator:
        """The items, while time is left; what was cut is recorded as `what` with the count done."""
        for done, item in enumerate(items):
            if not self.allows(f"{what} after {done} of {len(items)}"):
                return
            yield item


def timed(device: str, function: Callable[[], object]) -> tuple[float, object]:
    """Seconds of one run, from an idle device until its work is done (dirac bench's clock)."""
    return fastest(1, function, torch.device(device))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def mean_after_warm_up(times: list[float]) -> float | None:
    return statistics.mean(times[1:]) if len(times) > 1 else None


def peak_memory(device: str) -> dict[str, float]:
    """The GPU memory tensors took at most since the last reset, and what the allocator held."""
    if device != "cuda":
        return {}
    return {"peak GPU memory GiB": torch.cuda.max_memory_allocated() / 2**30,
            "peak GPU memory reserved GiB": torch.cuda.max_memory_reserved() / 2**30}


def speed(images: list[Image.Image], device: str, clock: Clock, report: dict, save: Callable[[str], None]) -> None:
    """Seconds per image, each image's and their mean: encode at the default effort, decode at 0
    and at 20 steps; and the files, for the later sections (report["files"], not written out)."""
    times: dict[str, list[float]] = report.setdefault("speed per image", {
        "encode": [], "decode 0 steps": [], "decode 20 steps": []})
    files = report.setdefault("files", [])
    report["speed"] = {**{name: None for name in times}, "images": 0}
    for image in clock.each([images[0], *images], "speed"):  # the first round warms up
        seconds, data = timed(device, lambda image=image: diraccodec.encode(image, LEVEL, device=device))
        zero, _ = timed(device, lambda data=data: diraccodec.decode(data, 0, device=device))
        twenty, _ = timed(device, lambda data=data: diraccodec.decode(data, 20, device=device))
        for name, value in zip(times, (seconds, zero, twenty), strict=True):
            times[name].append(value)
        files.append(data)
        report["speed"] = {**{name: mean_after_warm_up(values) for name, values in times.items()},
                           "images": max(len(files) - 1, 0)}
        save("speed")


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


def cross_device(images: list[Image.Image], device: str, clock: Clock, rows: list[dict],
                 save: Callable[[str], None]) -> None:
    """Each image encoded on the CPU and on `device` and read on both: symbols compared; then
    decoded on `device` and in the CPU's fast mode, each against the reference decoder (the
    CPU's exact mode, docs/format.md). Rows are added to `rows` as they are measured."""
    devices = ("cpu", device)
    decoders = {device: {"device": device}, "cpu (fast)": {"device": "cpu"}}
    for index, image in enumerate(clock.each(images, "cross-device images")):
        encoded = [diraccodec.encode(image, LEVEL, device=source) for source in devices]
        for source, data in zip(devices, encoded, strict=True):
            header = drc.unpack(data)
            streams = [api.get_codec(None, api.compute_for(reader)).read_stream(
                header.sections[drc.TAG_LATENTS], header.width, header.height, header.quality)
                for reader in devices]
            same_symbols = bool(np.array_equal(streams[0].symbols, streams[1].symbols)
                                and np.array_equal(streams[0].hyper, streams[1].hyper))
            # the fixed-point hyper-synthesis ran on each device: its tables and means agree to the bit
            same_parameters = bool(np.array_equal(streams[0].table_ids, streams[1].table_ids)
                                   and torch.equal(streams[0].mean, streams[1].mean))
            for steps in TOLERANCE:
                reference = pixels(diraccodec.decode(data, steps, device="cpu", exact=True))
                for name, options in decoders.items():
                    difference = np.abs(pixels(diraccodec.decode(data, steps, **options)) - reference)
                    largest, bound = TOLERANCE[steps]
                    measure = float(np.mean(difference != 0)) if steps == 0 else float(difference.mean())
                    within = bool(same_symbols and same_parameters and difference.max() <= largest
                                  and measure <= bound)
                    rows.append({"image": index, "encoded on": source, "decoded on": name, "steps": steps,
                                 "symbols identical": same_symbols, "entropy parameters identical": same_parameters,
                                 "largest difference": int(difference.max()),
                                 "mean difference": float(difference.mean()),
                                 "share differing": float(np.mean(difference != 0)), "within tolerance": within})
                save("cross device")
        again = diraccodec.encode(image, LEVEL, device=device)  # the device's kernels may sum in another order
        rows.append({"image": index, "bytes identical": encoded[0] == encoded[1],
                     "bytes": [len(data) for data in encoded], "repeat on the device identical": again == encoded[1]})
        save("cross device")


def with_cuda_graphs(files: list[bytes], device: str, clock: Clock) -> dict:
    """20-step decodes with the sampler's steps replayed from CUDA graphs: mean seconds (the
    first decode captures the graphs and is left out), how far their pixels lie from the same
    decodes without (the same kernels: expected identical), and the captures and refusals."""
    plain = [pixels(diraccodec.decode(data, 20, device=device)) for data in files[:3]]
    times = []
    with patch.dict(os.environ, {CUDA_GRAPHS_ENV: "1"}), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data in clock.each([files[0], *files], "CUDA graph decodes"):  # the first round warms up
            times.append(timed(device, lambda data=data: diraccodec.decode(data, 20, device=device))[0])
        replayed = [pixels(diraccodec.decode(data, 20, device=device)) for data in files[:3]]
    replays = [step for steps in sampler._REPLAYED_STEPS.values() for step in steps.values()]
    largest = max(int(np.abs(a - b).max()) for a, b in zip(plain, replayed, strict=True))
    return {"decode 20 steps": mean_after_warm_up(times), "images": max(len(times) - 1, 0),
            "largest difference from without": largest,
            "graphs captured": sum(getattr(step, "captures", 0) for step in replays),
            "shapes refused": sum(len(getattr(step, "refused", ())) for step in replays),
            "warnings": sorted({str(warning.message) for warning in caught})}


def large(photo: Image.Image, megapixels: float, steps: tuple[int, ...], device: str, clock: Clock,
          rows: list[dict], save: Callable[[str], None]) -> None:
    """Encode (effort 1) a photo scaled to `megapixels` (4:3) and decode it at each step count,
    while the budget lasts: seconds and peak GPU memory of each decode, added to `rows`."""
    height = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    image = photo.resize((height * 4 // 3, height), Image.Resampling.BICUBIC)
    data = diraccodec.encode(image, LEVEL, effort=1, device=device)
    for count in steps:
        if not clock.allows(f"{megapixels:g} MP photo at {count} steps"):
            return
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, _ = timed(device, lambda count=count: diraccodec.decode(data, count, device=device))
        rows.append({"size": f"{image.width}x{image.height}", "steps": count, "decode seconds": seconds,
                     **peak_memory(device)})
        save(f"{megapixels:g} MP")


def seconds_text(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f} s"


def markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}`", "",
             f"Device: {report['device']}, torch {report['torch']}; CPU: {report['cpu']}", ""]
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
                  f"{graphs['largest difference from without']}; {graphs['graphs captured']} graphs captured, "
                  f"{graphs['shapes refused']} shapes refused)"]
    if report.get("large"):
        lines += ["", "## Large photos", ""]
        lines += [f"- {row['size']}, {row['steps']} steps: {row['decode seconds']:.2f} s"
                  + (f", peak GPU memory {row['peak GPU memory GiB']:.2f} GiB (reserved "
                     f"{row['peak GPU memory reserved GiB']:.2f} GiB)" if "peak GPU memory GiB" in row else "")
                  for row in report["large"]]
    if "cross device" in report:
        verdict = "not checked" if report["conformant"] is None else report["conformant"]
        lines += ["", "## Cross-device conformance (against the CPU's exact mode)", "",
                  f"All within tolerance: {verdict}", ""]
        lines += [f"- {json.dumps(row)}" for row in report["cross device"]]
    if report["failed"]:
        lines += ["", "## Sections that failed", ""] + [f"- {name}: {why}" for name, why in report["failed"].items()]
    if report["left out"]:
        lines += ["", "## Left out by the time limit", ""] + [f"- {what}" for what in report["left out"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Folder of test images (Kodak).")
    parser.add_argument("--images", type=int, default=24, help="How many of them to time.")
    parser.add_argument("--cross-images", type=int, default=3, help="How many to check across devices.")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),  # the report names GPU 0
                        help="The device under test (cuda; cpu to try the script).")
    parser.add_argument("--large-megapixels", type=float, nargs="*", default=[12.0, 50.0],
                        help="Sizes of the large-photo runs (up to 12 MP at 20 steps, larger at 0 and 1); none: skip.")
    parser.add_argument("--minutes", type=float, default=None,
                        help="Time budget: begin nothing after it (default: none).")
    parser.add_argument("--large-reserve", type=float, default=150.0,
                        help="Seconds of the budget a photo over 12 MP needs left to begin (default 150).")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    clock = Clock(args.minutes)
    paths = images_in(args.data)[: args.images]
    images = [Image.open(path).convert("RGB") for path in paths]
    report: dict = {
        "command": " ".join(["python", *sys.argv]),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "cpu": cpu_description(),  # it runs the entropy coding and the CPU half of the cross checks
        "torch": torch.__version__,
        "left out": clock.left_out,
        "failed": {},
        "cross device": [],
        "large": [],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    files: list[bytes] = []

    def save(section: str) -> None:
        rows = [row for row in report["cross device"] if "within tolerance" in row]
        report["conformant"] = all(row["within tolerance"] for row in rows) if rows else None  # None: unchecked
        written = {key: value for key, value in report.items() if key != "files"}
        (args.output / "gpu-check.json").write_text(json.dumps(written, indent=1) + "\n")
        (args.output / "gpu-check.md").write_text(markdown(written))
        print(f"gpu-check: {section} written", flush=True)

    def section(name: str, work: Callable[[], None]) -> None:
        """Run one section; a failure is recorded with its error, and the next section runs."""
        try:
            work()
        except Exception as error:  # out of memory, a kernel fault: the section's loss, not the run's
            report["failed"][name] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
            if args.device == "cuda":
                torch.cuda.empty_cache()
        save(name)

    def profile_section() -> None:
        report["profile"] = where_time_goes(images[0], args.device, args.output)

    def graphs_section() -> None:
        report["cuda graphs"] = with_cuda_graphs(files, args.device, clock)

    section("speed", lambda: speed(images, args.device, clock, report, save))
    files = report.pop("files", [])[1:]  # the warm-up's file is the first image's again
    if images and clock.allows("profile"):
        section("profile", profile_section)
    section("cross device", lambda: cross_device(images[: args.cross_images], args.device, clock,
                                                 report["cross device"], save))
    sizes = [megapixels for megapixels in args.large_megapixels if megapixels > 0]
    for megapixels in (size for size in sizes if size <= 12):
        if images and clock.allows(f"{megapixels:g} MP photo"):
            section(f"{megapixels:g} MP photo", lambda megapixels=megapixels: large(
                images[0], megapixels, (20,), args.device, clock, report["large"], save))
    if args.device == "cuda" and files and clock.allows("CUDA graph decodes"):
        section("CUDA graphs", graphs_section)
    for megapixels in (size for size in sizes if size > 12):
        if images and clock.allows(f"{megapixels:g} MP photo", args.large_reserve if args.minutes else 0.0):
            section(f"{megapixels:g} MP photo", lambda megapixels=megapixels: large(
                images[0], megapixels, (0, 1), args.device, clock, report["large"], save))
    save("report")
    print(markdown(report))
    if report["conformant"] is False:
        return 1
    return 3 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
