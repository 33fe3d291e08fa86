"""Metrics against known values: LPIPS reference distances, MS-SSIM and BD-rate identities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from diraccodec.evaluation.metrics import bd_rate, frechet_distance, lpips, ms_ssim, patches, psnr
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


def test_bd_rate_needs_four_qualities_on_each_curve_and_an_overlap():
    rates, quality = [0.1, 0.2, 0.4, 0.8], [28.0, 31.0, 34.0, 37.0]
    assert np.isnan(bd_rate(rates, quality, rates[:3], quality[:3]))  # a parabola is not Bjontegaard's figure
    assert np.isnan(bd_rate(rates, quality, [0.1, 0.1, 0.2, 0.2], [28.0, 28.0, 31.0, 31.0]))  # two qualities
    assert np.isnan(bd_rate(rates, quality, rates, [q + 20 for q in quality]))  # no common quality
    assert bd_rate(rates, quality, [r * 0.8 for r in rates], [q + 1 for q in quality]) < -20


def test_frechet_distance_matches_the_closed_form_for_a_scaled_shifted_set():
    # b = 2a + c has covariance 4 S_a, so (S_a S_b)^(1/2) = 2 S_a and FD = |mu_b - mu_a|^2 + tr(S_a)
    a = np.random.default_rng(0).normal(size=(400, 6)) @ np.random.default_rng(1).normal(size=(6, 6))
    shift = np.arange(6.0)
    b = 2 * a + shift
    expected = np.sum((b.mean(0) - a.mean(0)) ** 2) + np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert np.isnan(frechet_distance(a[:1], b))


def test_patches_cover_the_image_on_a_half_overlapping_grid(sample_image):
    kodak_sized = sample_image.resize((768, 512))
    grid = patches(kodak_sized)
    assert grid.shape == (15, 3, 256, 256)  # 5 columns x 3 rows, every 128 pixels
    assert torch.equal(grid[1], patches(kodak_sized.crop((128, 0, 384, 256)))[0])
    assert patches(sample_image.crop((0, 0, 96, 64))).shape == (1, 3, 64, 64)


def test_bd_rate_is_bjontegaards_cubic_fit():
    """Log-rates that are cubics in quality are fitted exactly: the BD-rate is then the mean
    of their difference over the common qualities, which a line through them would miss."""
    quality = [30.0, 31.0, 32.0, 33.0, 34.0]
    log_rate = [0.05 * (q - 32) ** 3 + 0.3 * (q - 32) for q in quality]
    extra = [0.05 * (q - 30) ** 2 for q in quality]  # its mean over 30-34 is 0.05 * 16 / 3
    rates_a = np.exp(log_rate).tolist()
    rates_b = np.exp(np.add(log_rate, extra)).tolist()
    assert bd_rate(rates_a, quality, rates_b, quality) == pytest.approx((np.exp(0.05 * 16 / 3) - 1) * 100, abs=1e-6)


def test_psnr_of_an_exact_copy_is_100_db(sample_image):
    """A finite figure: an exact copy's infinity would make every mean over images infinite."""
    assert psnr(sample_image, sample_image.copy()) == 100.0


def test_ms_ssim_sees_every_channel(sample_image):
    red, green, blue = sample_image.split()
    blurred_blue = Image.merge("RGB", (red, green, blue.filter(ImageFilter.GaussianBlur(3))))
    assert ms_ssim(sample_image, blurred_blue) < 0.99


def test_the_patches_of_a_small_image_cover_it():
    """Patches of a short image are squares of its side, one every side at most: no column is left out."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 300, 3), dtype=np.uint8))
    tiles = patches(image)
    assert tiles.shape == (3, 3, 100, 100)
    pixels = torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1) / 255
    assert torch.equal(torch.cat(list(tiles), dim=2), pixels)


def test_lpips_gives_each_image_of_a_batch_its_own_distance():
    from diraccodec.perceptual.lpips import LPIPS

    model = LPIPS("alexnet")
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 64, 64, generator=generator), torch.rand(2, 3, 64, 64, generator=generator)
    b[1] = a[1]  # the second pair identical
    together = model(a, b)
    alone = torch.cat([model(a[:1], b[:1]), model(a[1:], b[1:])])
    torch.testing.assert_close(together, alone)
    assert together[1] == 0 < together[0]
