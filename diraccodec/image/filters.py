"""Filters over image tensors: the separable Gaussian blur that MS-SSIM, the detail map and the
sampler's finishing share, and the local periodic part of an image that the finishing can
take out."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def gaussian_window(sigma: float, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian taps at -radius..radius."""
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return taps / taps.sum()


def blur_radius(sigma: float) -> int:
    """The taps either side of a Gaussian blur of `sigma`: three sigma hold all but 0.3% of it."""
    return math.ceil(3 * sigma)


def separable_blur(x: torch.Tensor, window: torch.Tensor, pad: bool = False) -> torch.Tensor:
    """Each channel of (N, C, H, W) filtered by `window` along both axes (2k taps, not k^2).

    pad=False: the 'valid' part only (smaller output); pad=True: edges replicated, same size
    (replication works for any image size, where reflection needs more pixels than taps).
    """
    size, channels = window.numel(), x.shape[1]
    window = window.to(x)
    if pad:
        x = F.pad(x, (size // 2,) * 4, mode="replicate")
    x = F.conv2d(x, window.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return F.conv2d(x, window.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) blurred by a Gaussian of `sigma`, same size, edges replicated."""
    return separable_blur(x, gaussian_window(sigma, blur_radius(sigma)), pad=True)


def periodic_component(x: torch.Tensor, period: int, cells: float) -> torch.Tensor:
    """The part of (N, C, H, W) that repeats every `period` pixels along both axes, measured
    locally (a Gaussian of `cells` periods over the period's grid) and without its local mean.

    A network that upsamples by sub-pixel convolutions leaves a lattice of this kind, locked
    to its grid; subtracting it notches the harmonics of 1/period out of an image and leaves
    the rest nearly untouched. It is measured on the image minus its blur (sigma period/2,
    which keeps 99% of the lowest harmonic), since averaging by position within the period
    would take a smooth slope for a sawtooth. The grid starts at the top-left pixel; where the
    image does not fill a whole period, the missing pixels have weight 0 in the averages.
    """
    batch, channels, height, width = x.shape
    detail = x - gaussian_blur(x, period / 2)
    # one plane per position within the period, each averaged over nearby periods
    extra = (0, -width % period, 0, -height % period)
    phases = F.pixel_unshuffle(F.pad(detail, extra), period)
    present = F.pixel_unshuffle(F.pad(torch.ones_like(detail[:, :1]), extra), period)
    radius = blur_radius(cells)
    window = gaussian_window(cells, radius)

    def average(planes: torch.Tensor) -> torch.Tensor:
        return separable_blur(F.pad(planes, (radius,) * 4), window)

    local = average(phases) / average(present).clamp_min(1e-6).repeat(1, channels, 1, 1)
    rows, columns = local.shape[-2:]
    local_mean = local.view(batch, channels, period * period, rows, columns).mean(dim=2)
    lattice = F.pixel_shuffle(local, period) - local_mean.repeat_interleave(period, -2).repeat_interleave(period, -1)
    return lattice[..., :height, :width]


def periodic_reach(period: int, cells: float) -> int:
    """The pixels either side, along an axis, that `periodic_component` at a pixel depends on,
    where the image's part starts and ends on the period's grid (or at the image's own edge)."""
    return period * blur_radius(cells) + blur_radius(period / 2)
