"""Image quality metrics (PSNR, MS-SSIM, LPIPS) and the Bjontegaard delta rate."""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from diraccodec.image.filters import gaussian_window, separable_blur

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]."""
    array = np.array(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)[None] / 255


MAX_PSNR = 100.0  # dB: what identical images score, so that means and curve fits stay finite


def psnr(reference: Image.Image, decoded: Image.Image) -> float:
    """RGB PSNR in dB over all channels, on 8-bit values; at most MAX_PSNR."""
    a = np.asarray(reference.convert("RGB"), dtype=np.float64)
    b = np.asarray(decoded.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return MAX_PSNR if mse == 0 else min(MAX_PSNR, 10 * np.log10(255**2 / mse))


def ms_ssim(reference: Image.Image, decoded: Image.Image) -> float:
    """Multi-scale SSIM (Wang et al. 2003), per RGB channel on [0, 255], 5 scales, averaged.

    Scales that would be smaller than the 11x11 window are dropped and the weights renormalised,
    so small images still get a score.
    """
    x, y = (to_tensor(i) * 255 for i in (reference, decoded))
    window = gaussian_window(sigma=1.5, radius=5)  # the 11x11 window of the reference
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    levels = [w for i, w in enumerate(MS_SSIM_WEIGHTS) if min(x.shape[-2:]) // 2**i >= 11] or [1.0]
    weights = torch.tensor(levels, dtype=torch.float32) / sum(levels)
    values = []
    for index in range(len(levels)):
        mu_x, mu_y = separable_blur(x, window), separable_blur(y, window)
        sigma_x = separable_blur(x * x, window) - mu_x**2
        sigma_y = separable_blur(y * y, window) - mu_y**2
        sigma_xy = separable_blur(x * y, window) - mu_x * mu_y
        contrast = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
        if index == len(levels) - 1:
            luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
            values.append((luminance * contrast).mean(dim=(2, 3)).clamp_min(0))
        else:
            values.append(contrast.mean(dim=(2, 3)).clamp_min(0))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values, dim=0)  # (levels, 1, 3)
    return float(torch.prod(stacked ** weights[:, None, None], dim=0).mean())


@functools.lru_cache(maxsize=2)
def _lpips_model(network: str):
    from diraccodec.perceptual.lpips import LPIPS

    return LPIPS(network)


@torch.no_grad()
def lpips(reference: Image.Image, decoded: Image.Image, network: str = "alexnet") -> float:
    """LPIPS v0.1 distance (lower is closer)."""
    return float(_lpips_model(network)(to_tensor(reference), to_tensor(decoded))[0])


BD_POINTS = 4  # the fewest distinct qualities a curve's cubic fit needs


def bd_rate(rate_a: list[float], quality_a: list[float], rate_b: list[float], quality_b: list[float]) -> float:
    """Average bitrate difference of curve b against curve a, in percent, at equal quality.

    Bjontegaard (VCEG-M33): fit log-rate as a cubic in quality for each curve and compare
    the integrals over the quality interval both curves cover. Negative: b needs fewer bits.
    For a metric where lower is better (LPIPS), pass the negated values. NaN where the curves
    do not overlap, or where either has fewer than BD_POINTS qualities (a line or a parabola
    through them would be printed as if it were Bjontegaard's figure).
    """
    low = max(min(quality_a), min(quality_b))
    high = min(max(quality_a), max(quality_b))
    if high <= low or min(len(set(quality_a)), len(set(quality_b))) < BD_POINTS:
        return float("nan")
    fit_a = np.polyfit(quality_a, np.log(rate_a), 3)
    fit_b = np.polyfit(quality_b, np.log(rate_b), 3)
    integral_a = np.polyval(np.polyint(fit_a), high) - np.polyval(np.polyint(fit_a), low)
    integral_b = np.polyval(np.polyint(fit_b), high) - np.polyval(np.polyint(fit_b), low)
    return float((np.exp((integral_b - integral_a) / (high - low)) - 1) * 100)


FD_PATCH = 256
FD_STRIDE = 128
FD_DESCRIPTION = (
    "Frechet distance between Gaussians fitted to AlexNet conv5 features (ImageNet-trained "
    "weights from the LPIPS package, ReLU output averaged over space) of 256x256 patches taken "
    "every 128 pixels from the originals and from the decodes; not FID (no Inception weights here)"
)


def patches(image: Image.Image, size: int = FD_PATCH, stride: int = FD_STRIDE) -> torch.Tensor:
    """(P, 3, s, s) patches on a grid; in an image smaller than `size` they are squares of its
    short side, one every `stride` (at most) along its long side."""
    x = to_tensor(image)[0]
    size = min(size, *x.shape[-2:])
    stride = min(stride, size)
    tiles = x.unfold(1, size, stride).unfold(2, size, stride)  # (3, rows, cols, s, s)
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size)


@torch.no_grad()
def patch_features(image: Image.Image) -> np.ndarray:
    """(P, 256) AlexNet conv5 features of the image's patches, for the Frechet distance."""
    model = _lpips_model("alexnet")
    scaled = ((patches(image) * 2 - 1) - model.shift) / model.scale
    return model.stack(scaled)[-1].mean(dim=(2, 3)).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two sets of feature rows.

    The trace of the matrix square root is taken from the symmetric form S_a^(1/2) S_b S_a^(1/2),
    which has the same eigenvalues and stays real.
    """
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    distance = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return 0.0 if distance < 0 else distance  # a set against itself comes out a rounding error below 0
