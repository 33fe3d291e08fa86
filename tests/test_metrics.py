"""Metrics against known values: LPIPS reference distances, MS-SSIM and BD-rate identities."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageFilter
from torch.nn import functional as F

from diraccodec.evaluation.metrics import bd_rate, frechet_distance, lpips, ms_ssim, patch_features, patches, psnr
from diraccodec.perceptual.weights import load_numpy_pickle
from tests.conftest import saved_as

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


def reference_ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM as Wang, Simoncelli and Bovik (2003) define it, in float64 per RGB channel on
    [0, 255], then averaged: an 11x11 Gaussian window (sigma 1.5) over the valid part, K1 = 0.01,
    K2 = 0.03, 2x2 means between scales, the contrast-structure term at each scale and the
    luminance too at the coarsest, weighted (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Scales
    smaller than the window are left out and the weights of the others scaled to sum to 1."""
    taps = np.exp(-np.arange(-5.0, 6.0) ** 2 / (2 * 1.5**2))
    window = np.outer(taps, taps) / taps.sum() ** 2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])

    def local_mean(x: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, window.shape), window)

    def halved(x: np.ndarray) -> np.ndarray:
        rows, columns = x.shape[0] // 2, x.shape[1] // 2
        return x[: 2 * rows, : 2 * columns].reshape(rows, 2, columns, 2).mean(axis=(1, 3))

    scores = []
    for channel in range(3):
        x, y = a[..., channel].astype(np.float64), b[..., channel].astype(np.float64)
        contrast_structure, luminance = [], 1.0
        while len(contrast_structure) < len(weights) and min(x.shape) >= 11:
            mean_x, mean_y = local_mean(x), local_mean(y)
            variance_x, variance_y = local_mean(x * x) - mean_x**2, local_mean(y * y) - mean_y**2
            covariance = local_mean(x * y) - mean_x * mean_y
            terms = (2 * covariance + c2) / (variance_x + variance_y + c2)
            contrast_structure.append(terms.mean())
            luminance = ((2 * mean_x * mean_y + c1) / (mean_x**2 + mean_y**2 + c1) * terms).mean()
            x, y = halved(x), halved(y)
        used = weights[: len(contrast_structure)] / weights[: len(contrast_structure)].sum()
        values = [*contrast_structure[:-1], luminance]
        scores.append(np.prod(np.power(values, used)))
    return float(np.mean(scores))


def jpeg_at_quality_15(image: Image.Image) -> Image.Image:
    with Image.open(io.BytesIO(saved_as(image, "JPEG", quality=15))) as compressed:
        return compressed.convert("RGB")


def darker(image: Image.Image) -> Image.Image:
    return Image.eval(image, lambda value: value * 3 // 5)


@pytest.mark.parametrize(("box", "distort"), [((100, 40, 292, 216), jpeg_at_quality_15),
                                              ((150, 60, 246, 140), jpeg_at_quality_15),
                                              ((150, 60, 246, 140), darker)],
                         ids=["jpeg-5-scales", "jpeg-3-scales", "darker-3-scales"])
def test_ms_ssim_is_wang_s_definition(sample_image, box, distort):
    """A 192x176 crop has five scales (the fifth's 11 rows just fill the window), a 96x80 one
    three; the distortions are a real codec's (JPEG at quality 15) and a darkening, which the
    luminance term sees."""
    original = sample_image.crop(box)
    decoded = distort(original)
    expected = reference_ms_ssim(np.asarray(original), np.asarray(decoded))
    assert 0.85 < expected < 0.97  # distorted enough for every term to count
    assert ms_ssim(original, decoded) == pytest.approx(expected, abs=1e-5)  # float32 against float64


def test_fd_features_are_alexnet_conv5_of_lpips_normalised_patches(small_image):
    """The Frechet distance compares the space-averaged ReLU output of AlexNet's fifth (last)
    convolution on each patch, which AlexNet sees as LPIPS normalises it: [0, 1] mapped to
    [-1, 1], then shifted by (-0.030, -0.088, -0.188) and scaled by (0.458, 0.448, 0.450)."""
    from diraccodec.perceptual.lpips import LPIPS

    convolutions = LPIPS("alexnet").stack.features  # the LPIPS package's ImageNet-trained weights
    pixels = torch.from_numpy(np.array(small_image, np.float32) / 255).permute(2, 0, 1)[None]
    x = (pixels[..., :80, :80] * 2 - 1 - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
        [0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    with torch.no_grad():
        for index, convolution in enumerate(convolutions):  # conv1, pool, conv2, pool, conv3, conv4, conv5
            x = F.relu(convolution(F.max_pool2d(x, 3, 2) if index in (1, 2) else x))
    expected = x.mean(dim=(2, 3)).double().numpy()
    features = patch_features(small_image)
    assert features.shape == (1, 256) and len(convolutions) == 5  # one 80x80 patch of the 96x80 image
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-6)
