"""Image quality metrics and the Bjontegaard delta rate."""

from __future__ import annotations

import numpy as np
from PIL import Image


def psnr(reference: Image.Image, decoded: Image.Image) -> float:
    """RGB PSNR in dB over all channels, on 8-bit values."""
    a = np.asarray(reference.convert("RGB"), dtype=np.float64)
    b = np.asarray(decoded.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def bd_rate(rate_a: list[float], quality_a: list[float], rate_b: list[float], quality_b: list[float]) -> float:
    """Average bitrate difference of curve b against curve a, in percent, at equal quality.

    Bjontegaard (VCEG-M33): fit log-rate as a cubic in quality for each curve and compare
    the integrals over the quality interval both curves cover. Negative: b needs fewer bits.
    For a metric where lower is better (LPIPS), pass the negated values.
    """
    log_a, log_b = np.log(rate_a), np.log(rate_b)
    fit_a = np.polyfit(quality_a, log_a, min(3, len(rate_a) - 1))
    fit_b = np.polyfit(quality_b, log_b, min(3, len(rate_b) - 1))
    low = max(min(quality_a), min(quality_b))
    high = min(max(quality_a), max(quality_b))
    if high <= low:
        return float("nan")
    integral_a = np.polyval(np.polyint(fit_a), high) - np.polyval(np.polyint(fit_a), low)
    integral_b = np.polyval(np.polyint(fit_b), high) - np.polyval(np.polyint(fit_b), low)
    return float((np.exp((integral_b - integral_a) / (high - low)) - 1) * 100)
