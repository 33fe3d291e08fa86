"""Training crops cut on the device from photos decoded once and kept there as uint8.

The photos are decoded once (in threads) into one flat uint8 tensor on the training device;
each batch of random crops, with random horizontal flips, is then a single gather by index
there: no per-crop Python work and no copy from the host per step.

The remedy for the photos' JPEG blocking (a random downscale by 1.5x-2x before cropping) is
applied once at load: each photo is kept at `scale_steps` downscales spread over the range
(antialiased), and a crop picks one of them at random. A packed shard, already downscaled,
is kept at the downscale that remains (none for the usual 2x shard).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diraccodec.errors import DiracError
from diraccodec.training.data import DOWNSCALE_RANGE, photo_size, read_photo, shard_prescale, training_images
from diraccodec.transforms.networks import HYPER_STRIDE

CHANNELS = 3


@dataclass(frozen=True)
class _Copy:
    """One downscaled copy of a photo in the pixel buffer: `offset` pixels in, row by row."""

    offset: int
    width: int
    height: int


@dataclass(frozen=True)
class _Photo:
    path: Path
    copies: list[_Copy]


def check_whole_blocks(patch_size: int) -> None:
    """Every training crop goes through the base codec, which codes whole blocks of its
    hyper-latents: a crop of another side would fail at its first step, deep in a transform."""
    if patch_size % HYPER_STRIDE:
        raise DiracError(f"--patch-size must be a multiple of {HYPER_STRIDE} (whole hyper-latents), got {patch_size}")


def copy_sizes(size: tuple[int, int], patch_size: int, scales: Iterable[float]) -> list[tuple[int, int]]:
    """(width, height) of a photo at each downscale, none smaller than the patch; [] if the photo is."""
    width, height = size
    largest = min(width, height) / patch_size
    if largest < 1:
        return []
    sizes: list[tuple[int, int]] = []
    for scale in scales:
        scale = min(scale, largest)  # as far as the photo allows
        shape = (max(patch_size, round(width / scale)), max(patch_size, round(height / scale)))
        if shape not in sizes:
            sizes.append(shape)
    return sizes


def scale_grid(scale_range: tuple[float, float], prescale: float, steps: int) -> list[float]:
    """The downscales left to apply to a folder whose photos were already downscaled by `prescale`."""
    low, high = (max(1.0, bound / prescale) for bound in scale_range)
    return [low] if high - low < 1e-6 else np.linspace(low, high, steps).tolist()


class CropSampler:
    """Batches of random, flipped crops of training photos, drawn and cut on the device."""

    def __init__(
        self,
        folders: Iterable[Path],
        patch_size: int,
        scale_range: tuple[float, float] = DOWNSCALE_RANGE,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        scale_steps: int = 4,
    ) -> None:
        """generator: the draws' source, on `device` (a seeded one of its own when None)."""
        device = torch.device(device)
        self.generator = generator or torch.Generator(device).manual_seed(0)
        if self.generator.device.type != device.type:
            raise ValueError(f"the crops' generator is on {self.generator.device}, the photos on {device}")
        self.patch_size, self.channels_last = patch_size, channels_last
        folders = tuple(folders)
        photos, total = _plan(folders, patch_size, scale_range, scale_steps)
        if not photos:
            raise DiracError(f"no training image of at least {patch_size}x{patch_size} pixels found in "
                             f"{', '.join(map(str, folders))}")
        pixels = torch.empty((total, CHANNELS), dtype=torch.uint8)
        _decode_into(pixels.numpy(), photos)
        self.pixels = pixels.to(device)  # one row per pixel, RGB
        copies = [copy for photo in photos for copy in photo.copies]
        counts = [len(photo.copies) for photo in photos]

        def on_device(values: Iterable[int]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.int64, device=device)

        self.offsets = on_device(copy.offset for copy in copies)
        self.widths, self.heights = on_device(copy.width for copy in copies), on_device(copy.height for copy in copies)
        self.first_copy, self.copy_count = on_device(itertools.accumulate(counts[:-1], initial=0)), on_device(counts)
        self.image_count, self.copies = len(photos), len(copies)

    def _below(self, bound: torch.Tensor) -> torch.Tensor:
        """A uniform integer in [0, bound) for each element of `bound`."""
        fraction = torch.rand(bound.shape, generator=self.generator, device=bound.device)
        return torch.minimum((fraction * bound).long(), bound - 1)

    def batch(self, batch_size: int) -> torch.Tensor:
        """(batch_size, 3, patch, patch) float32 in [0, 1]: a uniformly chosen photo, one of its
        downscales, a uniform position and a coin-flip mirror per crop."""
        device, patch = self.pixels.device, self.patch_size
        image = torch.randint(self.image_count, (batch_size,), generator=self.generator, device=device)
        chosen = self.first_copy[image] + self._below(self.copy_count[image])
        width = self.widths[chosen]
        top, left = self._below(self.heights[chosen] - patch + 1), self._below(width - patch + 1)
        mirrored = torch.rand(batch_size, generator=self.generator, device=device) < 0.5
        span = torch.arange(patch, device=device)
        columns = left[:, None] + torch.where(mirrored[:, None], patch - 1 - span, span)
        rows = top[:, None] + span
        pixel = self.offsets[chosen][:, None, None] + (rows[:, :, None] * width[:, None, None] + columns[:, None, :])
        crops = self.pixels[pixel].permute(0, 3, 1, 2)  # NCHW over channels-last memory
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return crops.to(torch.float32, memory_format=memory_format).div_(255)


def _plan(folders: Iterable[Path], patch_size: int, scale_range: tuple[float, float],
          scale_steps: int) -> tuple[list[_Photo], int]:
    """The training photos large enough to crop, with the place of each copy in the pixel
    buffer (read from their headers alone); and the buffer's size in pixels."""
    photos, total = [], 0
    for folder in folders:
        scales = scale_grid(scale_range, shard_prescale(folder), scale_steps)
        for path in training_images([folder]):
            sizes = copy_sizes(photo_size(path), patch_size, scales)
            copies = []
            for width, height in sizes:
                copies.append(_Copy(total, width, height))
                total += width * height
            if copies:
                photos.append(_Photo(path, copies))
    return photos, total


def _decode_into(buffer: np.ndarray, photos: list[_Photo]) -> None:
    """Decode each photo and write its downscaled copies in their places, in threads (Pillow
    decodes and resizes outside the GIL)."""

    def decode(photo: _Photo) -> None:
        image = read_photo(photo.path)
        for copy in photo.copies:
            size = (copy.width, copy.height)
            resized = image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)
            buffer[copy.offset : copy.offset + copy.width * copy.height] = np.asarray(resized).reshape(-1, CHANNELS)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(decode, photos))
