"""The base codec's transforms: GDN learns its couplings between channels, and wider transforms
grow out of trained ones computing exactly what those did, then train."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
from diraccodec.entropy.models import SCALE_LOWER_BOUND
from diraccodec.training.base import model_from_weights
from diraccodec.training.widening import widen_into
from diraccodec.transforms.layers import GDN
from diraccodec.transforms.networks import SynthesisTransform


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_couplings_between_channels_learn_from_zero(inverse: bool):
    torch.manual_seed(0)
    gdn = GDN(4, inverse=inverse)
    x = torch.randn(2, 4, 6, 6)
    beta, gamma = gdn.beta_root.detach() ** 2, gdn.gamma_root.detach() ** 2
    norm = torch.sqrt(nn.functional.conv2d(x * x, gamma.view(4, 4, 1, 1), beta))
    assert torch.equal(gdn(x), x * norm if inverse else x / norm)  # the value is the plain formula
    gdn(x).square().sum().backward()
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert torch.equal(gdn.gamma_root.detach()[off_diagonal], torch.zeros(12))
    assert (gdn.gamma_root.grad[off_diagonal] != 0).all()


def trained_looking(model: MultiRateHyperprior) -> MultiRateHyperprior:
    """A small model whose GDNs have the off-diagonal couplings that training gives them."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, GDN):
                module.gamma_root.add_(0.05 * torch.rand_like(module.gamma_root))
    return model.eval()


def test_wider_transforms_start_as_the_trained_ones_and_train():
    start = trained_looking(MultiRateHyperprior(HyperpriorConfig(8, 12)))
    grown = model_from_weights(start, analysis_channels=16, synthesis_channels=12)
    assert grown.config.as_fields()["analysis_channels"] == 16
    assert grown.synthesis[2].weight.shape == (12, 12, 5, 5)
    x, level = torch.rand(2, 3, 64, 64), torch.tensor([1.0, 5.5])
    torch.testing.assert_close(grown.analysis(x), start.analysis(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(grown.reconstruct(x, level), start.reconstruct(x, level), rtol=0, atol=0)
    torch.manual_seed(2)
    result = grown(x, level)
    (result.reconstruction.square().mean() + 1e-4 * result.bits_latent.mean()).backward()
    # the zero weights from the new channels into the old ones receive gradients
    assert grown.analysis[2].weight.grad[:8, 8:].abs().amax() > 0
    assert grown.synthesis[2].weight.grad[8:, :8].abs().amax() > 0
    assert grown.synthesis[6].weight.grad[8:].abs().amax() > 0


def test_new_latents_start_silent_at_the_smallest_scale_and_train():
    start = trained_looking(MultiRateHyperprior(HyperpriorConfig(8, 12, context="checkerboard")))
    with torch.no_grad():  # a context model that has learned something
        start.context.parameters_net[-1].weight.normal_(0, 0.05)
    grown = model_from_weights(start, analysis_channels=16, latent_channels=20).eval()
    assert grown.config.latent_channels == 20 and grown.analysis[-1].weight.shape == (20, 16, 5, 5)
    x, level = torch.rand(2, 3, 64, 64), torch.tensor([1.0, 5.5])
    with torch.no_grad():
        y, y_start = grown.analysis(x), start.analysis(x)
        torch.testing.assert_close(y[:, :12], y_start, rtol=0, atol=1e-6)
        assert torch.equal(y[:, 12:], torch.zeros_like(y[:, 12:]))
        z_hat = torch.round(start.hyper_analysis(y_start))
        torch.testing.assert_close(grown.hyper_analysis(y), start.hyper_analysis(y_start), rtol=0, atol=1e-5)
        mean, scale = grown.latent_parameters(y, z_hat)
        mean_start, scale_start = start.latent_parameters(y_start, z_hat)
        torch.testing.assert_close(mean[:, :12], mean_start, rtol=0, atol=1e-5)
        torch.testing.assert_close(scale[:, :12], scale_start, rtol=0, atol=1e-5)
        assert torch.equal(mean[:, 12:], torch.zeros_like(mean[:, 12:]))
        assert torch.equal(scale[:, 12:], torch.full_like(scale[:, 12:], SCALE_LOWER_BOUND))
        assert (grown.reconstruct(x, level) - start.reconstruct(x, level)).abs().max() <= 1 / 255 + 1e-6
    # a new latent's gain at each level is the mean of the trained ones there
    torch.testing.assert_close(grown.log_gain[:, 12:], start.log_gain.mean(1, keepdim=True).expand(-1, 8))
    torch.manual_seed(2)
    result = grown.train()(x, level)
    (result.reconstruction.square().mean() + 1e-4 * result.bits_latent.mean()).backward()
    assert grown.analysis[-1].weight.grad[12:].abs().amax() > 0  # the new latents' making
    means_and_scales = grown.hyper_synthesis[-1].weight.grad
    assert means_and_scales[12:20].abs().amax() > 0 and means_and_scales[32:40].abs().amax() > 0
    assert grown.context.parameters_net[-1].weight.grad[32:40].abs().amax() > 0


def test_a_base_grown_to_more_latents_codes_the_same_symbols_and_pixels(tmp_path: Path, small_image: Image.Image):
    from diraccodec import api
    from diraccodec.modelfiles import export_base_weights

    start = trained_looking(MultiRateHyperprior(HyperpriorConfig(8, 12, context="checkerboard")))
    with torch.no_grad():
        start.context.parameters_net[-1].weight.normal_(0, 0.05)
    files = {"start": tmp_path / "start.safetensors", "grown": tmp_path / "grown.safetensors"}
    export_base_weights(start, files["start"], {})
    export_base_weights(model_from_weights(start, latent_channels=20), files["grown"], {})
    coded = {}
    for name, weights in files.items():
        encoded = api.encode(small_image, 5, effort=1, weights=weights)  # rounded: the search may use new latents
        codec = api.get_codec(weights, api.compute_for("cpu", False))
        latents = codec.read_stream(api.inspect(encoded).header.sections[b"LATS"], *small_image.size, 5)
        coded[name] = (latents.symbols, np.asarray(api.decode(encoded, 0, weights=weights), dtype=int))
    (symbols, pixels), (grown_symbols, grown_pixels) = coded["start"], coded["grown"]
    assert symbols.shape[0] == 12 and grown_symbols.shape[0] == 20
    assert np.array_equal(grown_symbols[:12], symbols) and not grown_symbols[12:].any()
    assert np.abs(grown_pixels - pixels).max() <= 1


def test_same_widths_change_nothing_and_narrower_ones_are_refused():
    start = trained_looking(MultiRateHyperprior(HyperpriorConfig(8, 12)))
    same = model_from_weights(start, analysis_channels=8)
    assert "analysis_channels" not in same.config.as_fields()
    for (name, value), other in zip(start.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(value, other), name
    with pytest.raises(ValueError, match="cannot grow"):
        model_from_weights(start, synthesis_channels=6)
    with pytest.raises(ValueError, match="cannot grow"):
        widen_into(SynthesisTransform(8, 12), nn.Sequential(*list(SynthesisTransform(8, 12))[:-1]))


@pytest.mark.slow
def test_the_cost_script_times_grown_widths_that_code_as_the_shipped_base(tmp_path: Path, small_image: Image.Image):
    small_image.save(tmp_path / "a.png")
    script = Path(__file__).resolve().parent.parent / "scripts" / "architecture_cost.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "--images", "1", "--repeat", "1",
                             "--widths", "96/96,112/104/176"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in result.stdout.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert [cell.strip() for cell in rows["stage"]] == ["96/96", "112/104/176"]
    assert all(float(cell) > 0 for stage, cells in rows.items() if stage != "stage" for cell in cells)
    shipped, grown = (float(cell) for cell in rows["bpp at the default effort"])
    assert grown == pytest.approx(shipped, rel=0.02)  # the same symbols but for the search's rounding


def test_only_images_above_a_megapixel_hand_their_tiles_memory_back(monkeypatch):
    from diraccodec.transforms import tiling

    trims: list[int] = []
    monkeypatch.setattr(tiling, "_malloc_trim", lambda: trims.append)
    image = torch.zeros(1, 3, 1100, 1200)  # 1.32 megapixels, tiled by 512 with a margin of 64
    tiling.apply_tiled(lambda tile: tile[:, :, ::16, ::16], image, Fraction(1, 16), 512, 64)
    assert len(trims) == 9  # after each of the 3x3 tiles
    trims.clear()
    tiling.apply_tiled(lambda tile: tile[:, :, ::16, ::16], image[..., :800, :1200], Fraction(1, 16), 512, 64)
    assert trims == []  # 0.96 megapixels: two rows of three tiles, kept
    tiling.apply_tiled(lambda tile: tile.repeat_interleave(16, -2).repeat_interleave(16, -1),
                       torch.zeros(1, 3, 70, 70), Fraction(16), 32, 4)  # 1.25 megapixels out
    assert len(trims) == 9


def test_replicate_padding_repeats_the_last_row_and_column_for_any_dtype():
    from diraccodec.transforms.tiling import replicate_padded

    pixels = torch.arange(3 * 5 * 7, dtype=torch.uint8).reshape(1, 3, 5, 7)
    for x in (pixels, pixels.float() / 255):
        for height, width in [(5, 7), (8, 7), (5, 16), (9, 10)]:
            expected = torch.nn.functional.pad(x.float(), (0, width - 7, 0, height - 5), mode="replicate")
            padded = replicate_padded(x, height, width)
            assert padded.dtype == x.dtype and torch.equal(padded.float(), expected)
    assert replicate_padded(pixels, 5, 7) is pixels  # nothing to add: no copy
