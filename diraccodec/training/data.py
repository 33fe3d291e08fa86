"""Training crops from folders of photos.

The photos are JPEG: cropping them at full size teaches the codec their 8x8 blocking. A
random downscale by 1.5x-2x before the crop removes it, so every crop is taken from a
region 1.5-2x larger than the patch and resized with antialiasing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from diraccodec.images import IMAGE_SUFFIXES


def list_images(folders: Iterable[Path]) -> list[Path]:
    paths: list[Path] = []
    for folder in folders:
        paths.extend(p for p in sorted(Path(folder).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths


class CropSampler:
    """Holds decoded photos in memory and draws random, downscaled crops from them."""

    def __init__(
        self,
        folders: Iterable[Path],
        patch_size: int,
        scale_range: tuple[float, float] = (1.5, 2.0),
        generator: torch.Generator | None = None,
    ) -> None:
        self.patch_size = patch_size
        self.scale_range = scale_range
        self.generator = generator or torch.Generator().manual_seed(0)
        self.images: list[torch.Tensor] = []
        for path in list_images(folders):
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
            if min(array.shape[:2]) >= patch_size:
                self.images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
        if not self.images:
            raise ValueError(f"no training image of at least {patch_size}x{patch_size} found")

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (), generator=self.generator))

    def crop(self) -> torch.Tensor:
        image = self.images[self._randint(len(self.images))]
        height, width = image.shape[1:]
        largest = min(height, width) / self.patch_size
        scale = min(self._uniform(*self.scale_range), largest)
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
