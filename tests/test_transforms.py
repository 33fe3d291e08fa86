"""The base codec's transforms: GDN learns its couplings between channels, and wider transforms
grow out of trained ones computing exactly what those did, then train."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
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


def test_the_cost_script_times_grown_widths_that_code_as_the_shipped_base(tmp_path: Path, small_image: Image.Image):
    small_image.save(tmp_path / "a.png")
    script = Path(__file__).resolve().parent.parent / "scripts" / "architecture_cost.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "--images", "1", "--repeat", "1",
                             "--widths", "96/96,112/104"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in result.stdout.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert [cell.strip() for cell in rows["stage"]] == ["96/96", "112/104"]
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
