"""`dirac bench`: seconds per megapixel of every stage, in this process, beside AVIF and JPEG XL.

Each stage is timed on its own on every image (the fastest of `repeat` runs), after one
warm-up round that loads the models, so process start and first-call costs stay out; the
table gives the median over the images, and their range. The reference codecs encode and
decode the same images in the same run, through Pillow.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from diraccodec import api
from diraccodec.compute import cpu_description
from diraccodec.container import drc
from diraccodec.errors import DiracError
from diraccodec.evaluation.codecs import check_references, decode_with_pillow, encode_with_pillow
from diraccodec.evaluation.report import command_line
from diraccodec.image.files import write_atomic
from diraccodec.image.planes import image_to_planes, images_in, open_image
from diraccodec.modelfiles import models_in_use

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "parrots.png"
# Reference codecs as people ship them, at a mid setting: (Pillow format, options)
REFERENCES = {
    "avif": ("AVIF", {"quality": 50, "speed": 6}),
    "jxl": ("JXL", {"quality": 70, "effort": 7}),
    "webp": ("WEBP", {"quality": 60, "method": 6}),
    "jpeg": ("JPEG", {"quality": 60, "optimize": True}),
}
EXTRA_STEPS = 4  # a step's cost is the difference of sampling 1 + EXTRA_STEPS steps and 1
STAGES = (
    ("load", "read and decode the input file into planes"),
    ("analysis", "analysis transform"),
    ("entropy coding", "hyper-analysis, entropy parameters, rounding and range coding"),
    ("encode", "whole encode at the effort (api.encode)"),
    ("entropy decoding", "range decoding and entropy parameters"),
    ("synthesis", "synthesis transform"),
    ("restoration", "restoration filter (0 steps)"),
    ("decode", "whole decode at 0 steps (api.decode)"),
    ("diffusion step", "one more sampling step: (5 steps minus 1) / 4"),
)


@dataclass(frozen=True)
class BenchOptions:
    images: tuple[Path, ...] = ()
    level: float = 4.0
    effort: int = api.DEFAULT_EFFORT
    references: tuple[str, ...] = ("avif", "jxl")
    steps: int = 0  # also time whole decodes at this many steps (0: no)
    repeat: int = 1
    device: str = "auto"
    exact: bool = False
    weights: str | None = None


def image_paths(sources: tuple[Path, ...]) -> list[Path]:
    """Image files from files and folders (a folder's images in name order), each once however
    often it is named (a file and its folder, a link to it); the sample if none."""
    if not sources:
        if not SAMPLE.exists():  # an installed package ships no sample
            raise DiracError("give the images (or folders of images) to time: the sample it takes by default, "
                             "samples/parrots.png, is in the repository, not in the installed package")
        return [SAMPLE]
    paths: list[Path] = []
    for source in sources:
        if source.is_dir():
            paths += images_in(source)
        else:
            paths.append(source)
    if not paths:
        raise DiracError("no images to time")
    unique: dict[str, Path] = {}
    for path in paths:  # a second copy would be timed, then replace the first's figures
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def fastest(repeat: int, function: Callable[[], object], device: torch.device | None = None) -> tuple[float, object]:
    """The shortest of `repeat` runs of `function`, and its last result. On a GPU each run is
    timed from an idle device until its work is done: a call returns while its kernels still run."""
    def synchronized_clock() -> float:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    best, result = float("inf"), None
    for _ in range(repeat):
        started = synchronized_clock()
        result = function()
        best = min(best, synchronized_clock() - started)
    return best, result


def time_image(path: Path, options: BenchOptions) -> dict[str, float]:
    """Seconds per megapixel of each stage on one image, and the file's bpp, with the stages
    run as the API runs them (api.model_calls: float32, no caller's autocast)."""
    with api.model_calls():
        return _time_stages(path, options)


def _time_stages(path: Path, options: BenchOptions) -> dict[str, float]:
    compute = api.compute_for(options.device, options.exact)

    def timed(function: Callable[[], object]) -> tuple[float, object]:
        return fastest(options.repeat, function, compute.device)

    codec = api.get_codec(options.weights, compute)
    seconds: dict[str, float] = {}
    planes = image_to_planes(open_image(path, 10**9), label=str(path))  # its warnings, once
    with warnings.catch_warnings():  # then timed without them
        warnings.simplefilter("ignore")
        seconds["load"], planes = timed(lambda: image_to_planes(open_image(path, 10**9)))
    rgb = planes.rgb
    height, width = rgb.shape[:2]
    level = api.check_quality(options.level, codec.num_levels)
    seconds["analysis"], latents = timed(lambda: codec.analysis_latents(rgb))
    seconds["entropy coding"], _ = timed(lambda: codec.write_stream(codec.quantize(latents, level, rgb), level))
    image = Image.fromarray(rgb)
    seconds["encode"], encoded = timed(lambda: api.encode(
        image, level, effort=options.effort, weights=options.weights, device=options.device))
    payload = api.inspect(encoded).header.sections[drc.TAG_LATENTS]
    seconds["entropy decoding"], decoded = timed(lambda: codec.read_stream(payload, width, height, level))
    seconds["synthesis"], base = timed(lambda: codec.synthesize(decoded, width, height, level))
    restorer = api.get_restorer(codec)
    if restorer is not None:
        seconds["restoration"], _ = timed(lambda: restorer.restore(base, level))
    seconds["decode"], _ = timed(lambda: api.decode(
        encoded, 0, weights=options.weights, device=options.device, exact=options.exact))
    try:
        diffusion = api.get_diffusion(codec)
    except DiracError:  # no diffusion weights for this base: no step to time
        diffusion = None
    if diffusion is not None:
        one, _ = timed(lambda: diffusion.sample(base, level, 1))
        five, _ = timed(lambda: diffusion.sample(base, level, 1 + EXTRA_STEPS))
        seconds["diffusion step"] = max(five - one, 0.0) / EXTRA_STEPS
    if options.steps:
        seconds[f"decode {options.steps} steps"], _ = timed(lambda: api.decode(
            encoded, options.steps, weights=options.weights, device=options.device, exact=options.exact))
    megapixels = width * height / 1e6
    figures = {stage: value / megapixels for stage, value in seconds.items()}
    figures["bpp"] = 8 * len(encoded) / (width * height)
    for key in options.references:
        image_format, settings = REFERENCES[key]
        encode_seconds, reference = timed(lambda f=image_format, s=settings: encode_with_pillow(
            image, f, **s))
        decode_seconds, _ = timed(lambda r=reference: decode_with_pillow(r))
        figures[f"{key} encode"] = encode_seconds / megapixels
        figures[f"{key} decode"] = decode_seconds / megapixels
        figures[f"{key} bpp"] = 8 * len(reference) / (width * height)
    return figures


def image_keys(paths: list[Path]) -> list[str]:
    """Each image's key in the report: its file name, or its path where two share a name."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.name] = counts.get(path.name, 0) + 1
    return [path.name if counts[path.name] == 1 else str(path) for path in paths]


def run_bench(options: BenchOptions, console: Console) -> dict:
    """Time every stage of each image after one warm-up (model loading and first kernel calls
    left out), beside the reference codecs; the report write_bench saves."""
    if unknown := [key for key in options.references if key not in REFERENCES]:
        raise DiracError(f"unknown reference codec {unknown[0]!r}; choose from {', '.join(REFERENCES)}")
    check_references(options.references)
    paths = image_paths(options.images)
    if options.steps:  # no diffusion weights for the steps: fail now, not after the first image's timings
        api.get_diffusion(api.get_codec(options.weights, api.compute_for(options.device, options.exact)))
    with warnings.catch_warnings():  # the image's own warnings come with its timings
        warnings.simplefilter("ignore")
        warm = open_image(paths[0], 10**9).convert("RGB").crop((0, 0, 128, 128))
    warm_file = api.encode(warm, options.level, effort=options.effort, weights=options.weights, device=options.device)
    for steps in (0, 2):  # loads the models and sets up their kernels once, outside the timings
        with contextlib.suppress(DiracError):  # no diffusion weights: no step to time
            api.decode(warm_file, steps, weights=options.weights, device=options.device, exact=options.exact)
    for key in options.references:  # and the reference codecs' libraries
        image_format, settings = REFERENCES[key]
        decode_with_pillow(encode_with_pillow(warm, image_format, **settings))
    per_image = {}
    names = image_keys(paths)
    for index, (path, key) in enumerate(zip(paths, names, strict=True), 1):
        console.print(f"[{index}/{len(paths)}] {key}")
        per_image[key] = time_image(path, options)
    figures = sorted({name for values in per_image.values() for name in values},
                     key=lambda name: list(per_image[names[0]]).index(name))
    summary = {}
    for name in figures:
        values = [image[name] for image in per_image.values() if name in image]
        summary[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return {
        "command": command_line() if sys.argv else "dirac bench",
        "options": {**asdict(options), "images": [str(p) for p in paths]},
        "machine": machine_description(options),
        "models": models_in_use(options.weights),  # the weights timed, by id
        "images": len(paths),
        "megapixels": sum(_pixels(path) for path in paths) / 1e6,
        "summary": summary,
        "per_image": per_image,
    }


def _pixels(path: Path) -> int:
    with Image.open(path) as image:  # the header alone, closed again
        return image.width * image.height


def machine_description(options: BenchOptions) -> dict[str, object]:
    import torch

    compute = api.compute_for(options.device, options.exact)
    gpu = f" ({torch.cuda.get_device_name(0)})" if compute.device.type == "cuda" else ""
    return {
        "processor": cpu_description(),
        "cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": f"{compute.device}{gpu}",
        "mode": "exact" if options.exact else "fast",
        "bfloat16 diffusion": compute.low_precision is not None,
    }


def table_of(report: dict) -> Table:
    options, machine = report["options"], report["machine"]
    table = Table(title=f"dirac bench: {report['images']} images, {report['megapixels']:.2f} MP, level "
                        f"{options['level']:g}, effort {options['effort']}, {machine['device']}, {machine['mode']}")
    for column in ("stage", "s/MP median", "min", "max"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, values in report["summary"].items():
        digits = 4 if "bpp" in name else 3
        table.add_row(name, *(f"{values[key]:.{digits}f}" for key in ("median", "min", "max")))
    return table


def markdown_of(report: dict) -> str:
    lines = [f"Command: `{report['command']}`", "",
             f"Machine: {', '.join(f'{k} {v}' for k, v in report['machine'].items())}", "",
             "| stage | s/MP median | min | max |", "|---|---|---|---|"]
    for name, values in report["summary"].items():
        digits = 4 if "bpp" in name else 3
        lines.append(f"| {name} | " + " | ".join(f"{values[k]:.{digits}f}" for k in ("median", "min", "max")) + " |")
    lines += ["", "What each stage times:", ""] + [f"- {name}: {meaning}" for name, meaning in STAGES]
    return "\n".join(lines) + "\n"


def write_bench(report: dict, json_path: Path | None, markdown: Path | None) -> None:
    if json_path is not None:
        write_atomic(json_path, (json.dumps(report, indent=1) + "\n").encode())
    if markdown is not None:
        write_atomic(markdown, markdown_of(report).encode())

