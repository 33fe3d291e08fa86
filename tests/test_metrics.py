"""Metrics against known values: LPIPS reference distances, MS-SSIM and BD-rate identities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diraccodec.evaluation.metrics import bd_rate, lpips, ms_ssim, psnr
from diraccodec.perceptual.weights import load_numpy_pickle

LPIPS_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lpips"


def reference(name: str) -> Image.Image:
    with Image.open(LPIPS_DATA / f"{name}.png") as image:
        return image.convert("RGB")


def test_lpips_alexnet_reproduces_the_reference_distances():
    assert lpips(reference("ex_ref"), reference("ex_p0")) == pytest.approx(0.722, abs=5e-4)
    assert lpips(reference("ex_ref"), reference("ex_p1")) == pytest.approx(0.138, abs=5e-4)
    assert lpips(reference("ex_ref"), reference("ex_ref")) == pytest.approx(0.0, abs=1e-6)


def test_weights_pickle_loader_refuses_anything_but_numpy():
    import pickle

    assert load_numpy_pickle(pickle.dumps({"a": np.arange(3)}))["a"].tolist() == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(pickle.dumps({"a": Path("x")}))


def test_ms_ssim_is_one_for_identical_images_and_falls_with_blur(sample_image):
    assert ms_ssim(sample_image, sample_image) == pytest.approx(1.0, abs=1e-9)
    mild = ms_ssim(sample_image, sample_image.filter(ImageFilter.GaussianBlur(1)))
    strong = ms_ssim(sample_image, sample_image.filter(ImageFilter.GaussianBlur(3)))
    assert 1.0 > mild > strong > 0.3


def test_psnr_of_a_known_error():
    a = Image.fromarray(np.full((8, 8, 3), 100, np.uint8))
    b = Image.fromarray(np.full((8, 8, 3), 110, np.uint8))
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 100))


def test_bd_rate_of_a_curve_that_needs_half_the_bits_is_minus_fifty_percent():
    rates = [0.1, 0.2, 0.4, 0.8]
    quality = [28.0, 31.0, 34.0, 37.0]
    assert bd_rate(rates, quality, [r / 2 for r in rates], quality) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(rates, quality, rates, quality) == pytest.approx(0.0, abs=1e-9)
