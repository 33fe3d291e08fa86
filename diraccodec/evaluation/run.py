"""The evaluation: every codec at every setting on a folder of images.

bpp comes from real file sizes; PSNR, MS-SSIM and LPIPS are computed per image and then
averaged; a Frechet distance compares the distribution of the decodes' patches with the
originals'. diraccodec's files are also decoded at several diffusion step counts (the
perception axis), each count a curve of its own. The caller sees the points after every
setting, so that a long run that is stopped keeps what it measured (diraccodec.evaluation.report
writes them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from diraccodec.console import draws_live_bars, plain_console
from diraccodec.container.drc import DEFAULT_MAX_PIXELS
from diraccodec.errors import DiracError
from diraccodec.evaluation.codecs import CodecUnderTest
from diraccodec.evaluation.metrics import frechet_distance, lpips, ms_ssim, patch_features, psnr
from diraccodec.image.planes import image_to_planes, images_in, open_image

OURS = "diraccodec"
SMALLEST_SIDE = 31  # pixels: LPIPS's AlexNet needs this much for its last layers


@dataclass
class Point:
    codec: str  # the curve: "diraccodec", "diraccodec (20 steps)", "AVIF", ...
    setting: float
    bpp: float
    psnr: float
    ms_ssim: float
    lpips: float
    fd_alexnet: float  # over all the images' patches at this setting
    seconds_per_mp: float  # encode + decode
    images: int
    steps: int | None = None
    seconds_per_step_per_mp: float | None = None  # the diffusion part of decoding, per step
    encode_seconds_per_mp: float | None = None  # the encode part of seconds_per_mp (None in older reports)


def curve_name(codec: str, steps: int | None) -> str:
    return f"{codec} ({steps} steps)" if steps else codec


def image_paths(folder: Path, held_out: bool = False) -> list[Path]:
    """The folder's images in name order; with `held_out`, the held-out training photos anywhere
    under it instead (diraccodec.training.data), the share that training leaves out."""
    if held_out:
        from diraccodec.training.data import held_out_images

        paths = held_out_images([folder])
    else:
        paths = images_in(folder)
    if not paths:
        raise DiracError(f"no {'held-out ' if held_out else ''}images in {folder}")
    return paths


def load_images(folder: Path, held_out: bool = False) -> list[Image.Image]:
    """The pixels of `image_paths(folder, held_out)`: the metrics compare pixels, and a codec
    that carries an ICC profile (diraccodec, Pillow's AVIF) would otherwise pay kilobytes for
    it that the others skip."""
    return read_images(image_paths(folder, held_out))


def read_images(paths: list[Path]) -> list[Image.Image]:
    """Each file read as the codec reads its input, as plain RGB pixels."""
    images = []
    for path in paths:
        # read as the codec reads its input (16-bit grey scaled, upright), then plain RGB pixels
        planes = image_to_planes(open_image(path, DEFAULT_MAX_PIXELS), with_metadata=False, label=str(path))
        height, width = planes.rgb.shape[:2]
        if min(height, width) < SMALLEST_SIDE:
            raise DiracError(f"{path} is {width}x{height}: the metrics need at least {SMALLEST_SIDE} pixels a side "
                             f"(LPIPS's AlexNet)")
        images.append(Image.fromarray(planes.rgb))
    return images


def images_id(images: list[Image.Image]) -> str:
    """A fingerprint of the images' pixels, in order: runs pool only when they measured the same
    images (a folder's name says little: another folder, or --images N, share it)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.width}x{image.height}{image.mode}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()[:16]


def evaluate(
    images: list[Image.Image],
    codecs: Sequence[CodecUnderTest],
    console: Console | None = None,
    on_point: Callable[[list[Point]], None] | None = None,
) -> list[Point]:
    """Every codec at every setting on every image; `on_point` sees the points after each setting."""
    console = plain_console(console)
    points: list[Point] = []
    settings_total, settings_done = sum(len(c.settings) for c in codecs), 0
    total = settings_total * len(images)
    megapixels = sum(image.width * image.height for image in images) / 1e6
    original_features = np.concatenate([patch_features(image) for image in images])
    one_line_per_setting = not draws_live_bars(console)  # in a log, instead of the bar
    with Progress(console=console, disable=one_line_per_setting) as progress:
        task = progress.add_task("evaluating", total=total)
        for codec in codecs:
            for setting in codec.settings:
                progress.update(task, description=f"{codec.name} {codec.setting_name} {setting:g}")
                bits = 0.0
                per_decoding: dict[int | None, dict[str, list]] = {}
                for image in images:
                    data, decodings = codec.round_trip(image, setting)
                    bits += 8 * len(data)
                    for decoding in decodings:
                        record = per_decoding.setdefault(decoding.steps, {"scores": [], "features": [],
                                                                          "seconds": 0.0, "shared": 0.0,
                                                                          "encode": 0.0})
                        decoded = decoding.image
                        record["scores"].append((psnr(image, decoded), ms_ssim(image, decoded), lpips(image, decoded)))
                        record["features"].append(patch_features(decoded))
                        record["seconds"] += decoding.seconds
                        record["shared"] += decoding.shared_seconds
                        record["encode"] += decoding.encode_seconds
                    progress.advance(task)
                for steps, record in per_decoding.items():
                    mean = [sum(column) / len(images) for column in zip(*record["scores"], strict=True)]
                    distance = frechet_distance(original_features, np.concatenate(record["features"]))
                    per_step = None
                    if steps:  # the diffusion stage alone: after the shared encode and synthesis
                        per_step = (record["seconds"] - record["shared"]) / steps / megapixels
                    points.append(Point(curve_name(codec.name, steps), setting, bits / (megapixels * 1e6), *mean,
                                        distance, record["seconds"] / megapixels, len(images), steps, per_step,
                                        record["encode"] / megapixels))
                if on_point is not None:
                    on_point(points)
                settings_done += 1
                if one_line_per_setting:
                    console.print(f"[{settings_done}/{settings_total}] {codec.name} {codec.setting_name} {setting:g}")
    return points
