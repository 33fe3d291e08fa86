"""One JSON file per rate curve of an evaluation report, in CompressAI's layout.

CompressAI keeps each codec's curve on a data set as its own file
(`results/image/kodak/<codec>.json`): `{"name", "description", "results": {"bpp": [...],
"psnr-rgb": [...], "ms-ssim-rgb": [...], ...}}`, one list per figure, all in the same
order. `write_curves` writes the curves of one of our reports that way, so that other
tools can plot them beside theirs: one file per curve (each reference codec, and
diraccodec at each diffusion step count), the points sorted by rate.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from diraccodec.evaluation.report import points_by_codec, points_of
from diraccodec.evaluation.run import OURS, Point
from diraccodec.image.files import write_atomic

# How each curve was made: the reference codecs as `reference_codecs` in codecs.py runs them.
CODEC_DESCRIPTIONS = {
    "JPEG": "JPEG through Pillow: 4:2:0 chroma subsampling, optimised Huffman tables",
    "WebP": "WebP through Pillow, method 6",
    "AVIF": "AVIF through Pillow, speed 6",
    "JPEG XL": "JPEG XL through Pillow's JPEG XL plugin, effort 7",
    OURS: "diraccodec at 0 diffusion steps: the base synthesis through the restoration filter",
}

# The report's figures, by the names CompressAI's files use where it has one.
FIGURES = (
    ("quality", "setting"),  # the -q value: a quality for the references, the rate level for diraccodec
    ("bpp", "bpp"),
    ("psnr-rgb", "psnr"),
    ("ms-ssim-rgb", "ms_ssim"),
    ("lpips-alex", "lpips"),
    ("fd-alexnet", "fd_alexnet"),
    ("seconds-per-mp", "seconds_per_mp"),  # encode plus decode, per megapixel
    ("encode-seconds-per-mp", "encode_seconds_per_mp"),
    ("seconds-per-step-per-mp", "seconds_per_step_per_mp"),  # the diffusion stage, per step
)


def file_name(curve: str) -> str:
    """`diraccodec (20 steps)` -> `diraccodec-20-steps.json`, `JPEG XL` -> `jpeg-xl.json`."""
    return re.sub(r"[^a-z0-9]+", "-", curve.lower()).strip("-") + ".json"


def describe(curve: str, points: list[Point], report: dict, data_name: str) -> str:
    steps = points[0].steps
    what = f"diraccodec decoded with {steps} diffusion steps" if steps else CODEC_DESCRIPTIONS.get(curve, curve)
    settings = ", ".join(f"{p.setting:g}" for p in points)
    images = max(p.images for p in points)
    return (f"{what}; settings (-q) {settings}. Data: {data_name}, {images} images; machine: "
            f"{report.get('machine', 'unknown')}. Measured by: {report['command']}")


def _known(value: float | None) -> float | None:
    """JSON has no NaN: a figure that was not measured is null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def curve_document(curve: str, points: list[Point], report: dict, data_name: str) -> dict:
    ordered = sorted(points, key=lambda p: p.bpp)
    results = {}
    for key, field in FIGURES:
        values = [_known(getattr(p, field)) for p in ordered]
        if any(value is not None for value in values):  # figures a curve does not have are left out
            results[key] = values
    return {"name": curve, "description": describe(curve, ordered, report, data_name), "results": results}


def render(document: dict) -> str:
    """Indented like CompressAI's files, but each list on one line, so the files stay small."""
    entries = ",\n".join(f"    {json.dumps(key)}: {json.dumps(values)}" for key, values in document["results"].items())
    return (f'{{\n  "name": {json.dumps(document["name"])},\n  "description": {json.dumps(document["description"])},\n'
            f'  "results": {{\n{entries}\n  }}\n}}\n')


def write_curves(report: dict, folder: Path, data_name: str) -> list[Path]:
    """Write each curve of `report` (a loaded evaluation JSON) to `folder`; returns the paths written."""
    folder = Path(folder)
    written = []
    for curve, points in points_by_codec(points_of(report)).items():
        path = folder / file_name(curve)
        write_atomic(path, render(curve_document(curve, points, report, data_name)).encode())
        written.append(path)
    return written
