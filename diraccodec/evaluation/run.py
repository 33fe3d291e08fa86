"""The rate-distortion evaluation: every codec at every setting on a folder of images.

bpp comes from real file sizes; PSNR, MS-SSIM and LPIPS are computed per image and then
averaged. Writes a JSON of every figure, a rate-distortion plot and a Markdown table that
names the command that produced it.
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
from diraccodec.evaluation.metrics import bd_rate, lpips, ms_ssim, psnr
from diraccodec.images import IMAGE_SUFFIXES

ANCHOR = "diraccodec"


@dataclass
class Point:
    codec: str
    setting: float
    bpp: float
    psnr: float
    ms_ssim: float
    lpips: float
    seconds_per_mp: float  # encode + decode
    images: int


def load_images(folder: Path) -> list[Image.Image]:
    paths = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise ValueError(f"no images in {folder}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def evaluate(
    images: list[Image.Image], codecs: Sequence[CodecUnderTest], console: Console | None = None
) -> list[Point]:
    console = console or Console(stderr=True)
    points = []
    total = sum(len(c.settings) for c in codecs) * len(images)
    pixels = sum(image.width * image.height for image in images)
    with Progress(console=console) as progress:
        task = progress.add_task("evaluating", total=total)
        for codec in codecs:
            for setting in codec.settings:
                bits = seconds = 0.0
                scores: list[tuple[float, float, float]] = []
                for image in images:
                    started = time.perf_counter()
                    data, decoded = codec.round_trip(image, setting)
                    seconds += time.perf_counter() - started
                    bits += 8 * len(data)
                    scores.append((psnr(image, decoded), ms_ssim(image, decoded), lpips(image, decoded)))
                    progress.advance(task)
                mean = [sum(column) / len(scores) for column in zip(*scores, strict=True)]
                points.append(Point(codec.name, setting, bits / pixels, *mean, seconds / (pixels / 1e6), len(images)))
    return points


def curves(points: list[Point]) -> dict[str, list[Point]]:
    grouped: dict[str, list[Point]] = {}
    for point in points:
        grouped.setdefault(point.codec, []).append(point)
    return grouped


def bd_rates(points: list[Point], metric: str) -> dict[str, float]:
    """BD-rate of the anchor against every other codec; LPIPS is negated (lower is better)."""
    sign = -1.0 if metric == "lpips" else 1.0
    grouped = curves(points)
    ours = grouped[ANCHOR]

    def axis(curve: list[Point]) -> tuple[list[float], list[float]]:
        return [p.bpp for p in curve], [sign * getattr(p, metric) for p in curve]

    return {name: bd_rate(*axis(curve), *axis(ours)) for name, curve in grouped.items() if name != ANCHOR}


def plot(points: list[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, curve in curves(points).items():
        style = dict(marker="o", linewidth=2.5 if name == ANCHOR else 1.2)
        for ax, metric in zip(axes, ("psnr", "ms_ssim", "lpips"), strict=True):
            ax.plot([p.bpp for p in curve], [getattr(p, metric) for p in curve], label=name, **style)
    for ax, label in zip(axes, ("PSNR (dB, RGB)", "MS-SSIM", "LPIPS (AlexNet, lower is better)"), strict=True):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(points: list[Point], json_path: Path, markdown_path: Path | None, plot_path: Path | None,
                 data_name: str) -> dict:
    command = " ".join(shlex.quote(a) for a in ["dirac", *sys.argv[1:]])
    report = {
        "command": command,
        "data": data_name,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "points": [asdict(p) for p in points],
        "bd_rate_psnr_percent": bd_rates(points, "psnr"),
        "bd_rate_lpips_percent": bd_rates(points, "lpips"),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    if plot_path is not None:
        plot(points, plot_path, f"rate-distortion on {data_name}")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown_table(report))
    return report


def markdown_table(report: dict) -> str:
    lines = [
        f"Reproduce: `{report['command']}` (data: {report['data']}; machine: {report['machine']})",
        "",
        "| codec | setting | bpp | PSNR (dB) | MS-SSIM | LPIPS | enc+dec s/MP |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report["points"]:
        lines.append(
            f"| {p['codec']} | {p['setting']:g} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} "
            f"| {p['lpips']:.4f} | {p['seconds_per_mp']:.2f} |"
        )
    lines += ["", f"BD-rate of {ANCHOR} (negative: fewer bits for the same quality):", "",
              "| against | BD-rate (PSNR) | BD-rate (LPIPS) |", "|---|---:|---:|"]
    for name, value in report["bd_rate_psnr_percent"].items():
        lines.append(f"| {name} | {value:+.1f}% | {report['bd_rate_lpips_percent'][name]:+.1f}% |")
    return "\n".join(lines) + "\n"
