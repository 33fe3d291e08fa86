"""Training crops from folders of photos, and packed shards of them.

The photos are JPEG: cropping them at full size teaches the codec their 8x8 blocking. A
random downscale by 1.5x-2x before the crop removes it, so every crop is taken from a
region 1.5-2x larger than the patch and resized with antialiasing.

A shard is such a folder downscaled once, ahead of time, and re-encoded small enough to
travel to a lent GPU machine (whose working tree is limited to 64 MiB). Its `shard.json`
records the downscale already applied, so the sampler only applies what remains.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from diraccodec.errors import DiracError
from diraccodec.image.planes import IMAGE_SUFFIXES

SHARD_MANIFEST = "shard.json"
DOWNSCALE_RANGE = (1.5, 2.0)


def list_images(folders: Iterable[Path]) -> list[Path]:
    paths: list[Path] = []
    for folder in folders:
        paths.extend(p for p in sorted(Path(folder).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths


def shard_prescale(folder: Path) -> float:
    """The downscale a packed shard already applied (1 for an ordinary folder)."""
    try:
        return float(json.loads((Path(folder) / SHARD_MANIFEST).read_text())["prescale"])
    except FileNotFoundError:
        return 1.0


def pack_shard(
    folders: Iterable[Path], output: Path, prescale: float = 2.0, quality: int = 80, min_side: int = 128
) -> tuple[int, int]:
    """Downscale every photo by `prescale` and store it as 4:4:4 JPEG; returns (images, bytes).

    The downscale removes the source's JPEG blocking before the re-encoding at high quality.
    Images whose short side would fall under `min_side` are left out.
    """
    folders = tuple(folders)  # read twice: for the photos and for the manifest
    output.mkdir(parents=True, exist_ok=True)
    count = total = 0
    for index, path in enumerate(list_images(folders)):
        with Image.open(path) as image:
            image = image.convert("RGB")
            size = (round(image.width / prescale), round(image.height / prescale))
            if min(size) < min_side:
                continue
            small = image.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=quality, subsampling=0)
        (output / f"{index:05d}.jpg").write_bytes(buffer.getvalue())
        count, total = count + 1, total + buffer.tell()
    temporary = output / f".{SHARD_MANIFEST}.part"
    temporary.write_text(json.dumps({"prescale": prescale, "quality": quality, "images": count,
                                     "sources": [str(f) for f in folders]}, indent=2) + "\n")
    os.replace(temporary, output / SHARD_MANIFEST)
    return count, total


class CropSampler:
    """Holds decoded photos in memory and draws random, downscaled crops from them."""

    def __init__(
        self,
        folders: Iterable[Path],
        patch_size: int,
        scale_range: tuple[float, float] = DOWNSCALE_RANGE,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        """Images are kept (as uint8) on `device`, so that on a GPU the crops are cut there."""
        self.patch_size = patch_size
        self.generator = generator or torch.Generator().manual_seed(0)
        self.images: list[torch.Tensor] = []
        self.scale_ranges: list[tuple[float, float]] = []
        for folder in folders:
            prescale = shard_prescale(folder)
            remaining = (max(1.0, scale_range[0] / prescale), max(1.0, scale_range[1] / prescale))
            for path in list_images([folder]):
                with Image.open(path) as image:
                    array = np.asarray(image.convert("RGB"))
                if min(array.shape[:2]) >= patch_size:
                    self.images.append(torch.from_numpy(array.copy()).permute(2, 0, 1).to(device))
                    self.scale_ranges.append(remaining)
        if not self.images:
            raise DiracError(f"no training image of at least {patch_size}x{patch_size} pixels found")

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (), generator=self.generator))

    def crop(self) -> torch.Tensor:
        index = self._randint(len(self.images))
        image = self.images[index]
        height, width = image.shape[1:]
        largest = min(height, width) / self.patch_size
        scale = min(self._uniform(*self.scale_ranges[index]), largest)
        size = max(self.patch_size, int(self.patch_size * scale))
        top, left = self._randint(height - size + 1), self._randint(width - size + 1)
        region = image[:, top : top + size, left : left + size].float().unsqueeze(0) / 255
        if size != self.patch_size:
            region = F.interpolate(region, size=self.patch_size, mode="bilinear", antialias=True, align_corners=False)
        if self._randint(2):
            region = region.flip(-1)
        return region.clamp(0, 1)

    def batch(self, batch_size: int) -> torch.Tensor:
        return torch.cat([self.crop() for _ in range(batch_size)])
