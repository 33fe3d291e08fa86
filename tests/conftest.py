"""Shared fixtures: real images (the shipped sample and Kodak crops) and the shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "parrots.png"
KODAK = ROOT.parent / "shared" / "data" / "kodak"


@pytest.fixture(scope="session")
def sample_image() -> Image.Image:
    with Image.open(SAMPLE) as image:
        return image.convert("RGB")


@pytest.fixture(scope="session")
def small_image(sample_image: Image.Image) -> Image.Image:
    """A 96x80 crop: big enough to be a real photo, small enough to code in milliseconds."""
    return sample_image.crop((150, 60, 246, 140))


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / max(np.mean((x - y) ** 2), 1e-12)))
