"""The rate-distortion evaluation: every codec at every setting on a folder of images.

Writes a JSON of every figure and a Markdown table with the command that produced it.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.progress import Progress

from diraccodec.evaluation.codecs import CodecUnderTest
from diraccodec.evaluation.metrics import bd_rate, psnr
from diraccodec.images import IMAGE_SUFFIXES


@dataclass
class Point:
    codec: str
    setting: float
    bpp: float
    psnr: float
    encode_decode_seconds_per_mp: float
    images: int


def evaluate(
    folder: Path, codecs: Sequence[CodecUnderTest], console: Console | None = None
) -> list[Point]:
    console = console or Console(stderr=True)
    paths = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise ValueError(f"no images in {folder}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    points = []
    total = sum(len(c.settings) for c in codecs) * len(images)
    with Progress(console=console) as progress:
        task = progress.add_task("evaluating", total=total)
        for codec in codecs:
            for setting in codec.settings:
                bits = pixels = seconds = 0.0
                scores = []
                for image in images:
                    started = time.perf_counter()
                    data, decoded = codec.round_trip(image, setting)
                    seconds += time.perf_counter() - started
                    bits += 8 * len(data)
                    pixels += image.width * image.height
                    scores.append(psnr(image, decoded))
                    progress.advance(task)
                points.append(Point(codec.name, setting, bits / pixels, sum(scores) / len(scores),
                                    seconds / (pixels / 1e6), len(images)))
    return points


def bd_rates(points: list[Point], anchor: str) -> dict[str, float]:
    """BD-rate (PSNR) of `anchor` against every other codec."""
    curves: dict[str, list[Point]] = {}
    for point in points:
        curves.setdefault(point.codec, []).append(point)
    ours = curves[anchor]
    return {
        name: bd_rate([p.bpp for p in curve], [p.psnr for p in curve], [p.bpp for p in ours], [p.psnr for p in ours])
        for name, curve in curves.items()
        if name != anchor
    }


def write_report(points: list[Point], anchor: str, json_path: Path, markdown_path: Path | None) -> None:
    command = " ".join(shlex.quote(a) for a in ["dirac", *sys.argv[1:]])
    report = {
        "command": command,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "points": [asdict(p) for p in points],
        "bd_rate_psnr_percent": bd_rates(points, anchor),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    if markdown_path is None:
        return
    lines = [
        f"Reproduce: `{command}`",
        "",
        "| codec | setting | bpp | PSNR (dB) | enc+dec s/MP |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in points:
        seconds = p.encode_decode_seconds_per_mp
        lines.append(f"| {p.codec} | {p.setting:g} | {p.bpp:.4f} | {p.psnr:.2f} | {seconds:.2f} |")
    lines += ["", f"BD-rate of {anchor} (PSNR), negative = fewer bits at equal PSNR:", ""]
    for name, value in report["bd_rate_psnr_percent"].items():
        lines.append(f"- against {name}: {value:+.1f}%")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text("\n".join(lines) + "\n")
