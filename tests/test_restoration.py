"""The restoration filter at 0 steps: used when installed for the base, deterministic, tiled
without seams, left out of the diffusion path, and trained from the diffusion U-Net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import diraccodec
from diraccodec.cli import main
from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS, export_restoration_weights, load_base_weights
from diraccodec.restoration import filter as restoration
from diraccodec.restoration.filter import FIXED_TIME, RestorationFilter, Restorer
from diraccodec.restoration.unet import RESIDUAL_SCALE, ResidualUNet, ResidualUNetConfig
from tests.conftest import SAMPLE, psnr, random_unet


def random_restorer() -> RestorationFilter:
    return RestorationFilter(random_unet()).eval()


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install a restoration filter (random, so that it visibly acts) for the given base id."""

    def install(base_id: bytes) -> None:
        path = tmp_path / f"restoration-{base_id.hex()}.safetensors"
        export_restoration_weights(random_restorer(), base_id, path, {"purpose": "test"})
        monkeypatch.setenv("DIRAC_RESTORATION_WEIGHTS", str(path))

    return install


def shipped_base_id() -> bytes:
    return load_base_weights(DEFAULT_BASE_WEIGHTS.resolve()).weights_id


def test_zero_steps_go_through_the_installed_filter_and_repeat_exactly(small_image, installed,
                                                                       random_diffusion_weights):
    data = diraccodec.encode(small_image, 3)
    synthesis = np.asarray(diraccodec.decode(data, steps=0, restore=False), dtype=np.int16)
    installed(shipped_base_id())
    restored = np.asarray(diraccodec.decode(data, steps=0), dtype=np.int16)
    assert np.abs(restored - synthesis).mean() > 1  # the filter acted
    np.testing.assert_array_equal(restored, np.asarray(diraccodec.decode(data, steps=0)))
    np.testing.assert_array_equal(synthesis, np.asarray(diraccodec.decode(data, steps=0, restore=False)))
    # the diffusion decoder starts from the unfiltered synthesis, on which it was trained
    enhanced = np.asarray(diraccodec.decode(data, steps=2, diffusion_weights=random_diffusion_weights))
    installed(b"\x00" * 8)  # a filter for other base weights is not used at all
    np.testing.assert_array_equal(np.asarray(diraccodec.decode(data, steps=0), dtype=np.int16), synthesis)
    np.testing.assert_array_equal(enhanced, np.asarray(diraccodec.decode(data, steps=2,
                                                                         diffusion_weights=random_diffusion_weights)))


def test_filter_tiles_leave_no_seam(monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 256, (200, 264, 3), dtype=np.uint8)
    restorer = Restorer(random_restorer())
    whole = restorer.restore(rgb, 2.5).astype(np.int16)
    monkeypatch.setattr(restoration, "UNET_TILE", 64)
    tiled = restorer.restore(rgb, 2.5).astype(np.int16)
    assert whole.shape == rgb.shape and np.abs(whole - rgb).mean() > 1
    assert np.abs(tiled - whole).max() <= 1  # float rounding only


def test_info_says_whether_zero_steps_are_restored(small_image, installed, tmp_path):
    path = tmp_path / "a.drc"
    path.write_bytes(diraccodec.encode(small_image, 2))
    installed(shipped_base_id())
    assert "0 steps go through" in CliRunner().invoke(main, ["info", str(path)]).output
    installed(b"\x00" * 8)
    assert "base synthesis alone" in CliRunner().invoke(main, ["info", str(path)]).output


def test_info_says_whether_a_decoder_trained_on_the_filter_can_run(small_image, installed, tmp_path, monkeypatch):
    from diraccodec.diffusion.finishing import FinishingSettings
    from diraccodec.diffusion.sampler import SamplerSettings
    from diraccodec.modelfiles import export_diffusion_weights, load_restoration_weights

    path = tmp_path / "a.drc"
    path.write_bytes(diraccodec.encode(small_image, 2))
    installed(shipped_base_id())
    filter_id = load_restoration_weights().weights_id
    diffusion = tmp_path / "d" / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), shipped_base_id(), diffusion,
                             {"purpose": "test"}, restoration_weights_id=filter_id,
                             finishing=FinishingSettings(full_steps=12))
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(diffusion))
    output = " ".join(CliRunner().invoke(main, ["info", str(path)]).output.split())
    assert "available (diffusion.safetensors); decode with --steps N (its full effect from 12)" in output
    monkeypatch.setenv("DIRAC_RESTORATION_WEIGHTS", "none")  # no filter installed
    output = " ".join(CliRunner().invoke(main, ["info", str(path)]).output.split())
    assert f"enhances the output of restoration weights {filter_id.hex()}, which are not installed" in output


def test_a_diffusion_decoder_s_file_is_refused_as_the_filter(small_image, tmp_path, monkeypatch):
    """The two U-Nets share their layers and their base's id: only the file's kind tells them
    apart. Named as the filter, a diffusion decoder's file fails in one line, not silently."""
    from diraccodec.modelfiles import DEFAULT_DIFFUSION_WEIGHTS, load_restoration_weights

    path = tmp_path / "a.drc"
    path.write_bytes(diraccodec.encode(small_image, 2))
    monkeypatch.setenv("DIRAC_RESTORATION_WEIGHTS", str(DEFAULT_DIFFUSION_WEIGHTS.resolve()))
    with pytest.raises(diraccodec.DiracError, match=r"not a diraccodec restoration weights file \(a diffusion decoder"):
        load_restoration_weights()
    result = CliRunner().invoke(main, ["decode", str(path), "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 2 and "not a diraccodec restoration weights file" in result.output
    assert not (tmp_path / "a.png").exists()


def test_a_filter_named_where_none_is_fails_rather_than_decoding_unrestored(small_image, tmp_path, monkeypatch):
    """A misspelt $DIRAC_RESTORATION_WEIGHTS gave the base synthesis alone, silently."""
    path = tmp_path / "a.drc"
    path.write_bytes(diraccodec.encode(small_image, 2, effort=1))
    monkeypatch.setenv("DIRAC_RESTORATION_WEIGHTS", str(tmp_path / "restoraton.safetensors"))
    result = CliRunner().invoke(main, ["decode", str(path), "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 2 and not (tmp_path / "a.png").exists()
    assert result.output == (f"dirac: error: no restoration weights at {tmp_path / 'restoraton.safetensors'} "
                             f"($DIRAC_RESTORATION_WEIGHTS)\n")
    info = CliRunner().invoke(main, ["info", str(path)])
    assert info.exit_code == 0 and "unavailable (no restoration weights at" in info.output
    monkeypatch.setenv("DIRAC_RESTORATION_WEIGHTS", "none")  # asked for by name: the base synthesis alone
    assert diraccodec.decode(path.read_bytes(), 0).tobytes() == diraccodec.decode(path.read_bytes(), 0,
                                                                                   restore=False).tobytes()


def test_training_starts_from_the_diffusion_unet_and_exports_a_filter(sample_image, diffusion_weights, tmp_path):
    from diraccodec.modelfiles import load_diffusion_weights, load_restoration_weights
    from diraccodec.training.restoration import RestorationTrainingOptions, restoration_loss, train_restoration

    photos = tmp_path / "photos"
    photos.mkdir()
    sample_image.save(photos / "a.png")
    checkpoint = tmp_path / "ck.safetensors"
    options = RestorationTrainingOptions(data=(photos,), checkpoint=checkpoint, steps=1, batch_size=2, patch_size=64,
                                         learning_rate=0.0, start_from=diffusion_weights, log_every=1, threads=1)
    train_restoration(options)  # one step at a learning rate of 0: the starting point itself is saved
    result = CliRunner().invoke(main, ["train", "export", str(checkpoint), str(tmp_path / "r.safetensors")])
    assert result.exit_code == 0 and "restoration filter" in result.output
    restorer = load_restoration_weights(tmp_path / "r.safetensors").model
    unet = load_diffusion_weights(diffusion_weights).model
    base, level = torch.rand(1, 3, 64, 64), torch.tensor([3.0])
    expected = unet(torch.zeros_like(base), torch.tensor([FIXED_TIME]), base, level) * RESIDUAL_SCALE
    torch.testing.assert_close(restorer(base, level), expected)
    # the loss is the error relative to the base's: 1 for a filter that changes nothing
    identity = RestorationFilter(ResidualUNet(ResidualUNetConfig(widths=(8, 16, 16))))
    batch = torch.rand(2, 3, 64, 64)
    figures = restoration_loss(identity, batch, (batch + 0.05).clamp(0, 1), torch.tensor([1.0, 8.0]))
    torch.testing.assert_close(figures["loss"], torch.tensor(1.0))


@pytest.mark.parametrize("level", [1, 4, 8])
def test_shipped_filter_makes_the_base_image_more_faithful(level):
    from PIL import Image

    with Image.open(SAMPLE) as image:
        photo = image.convert("RGB").crop((64, 64, 320, 320))
    data = diraccodec.encode(photo, level)
    assert psnr(photo, diraccodec.decode(data, steps=0)) > psnr(photo, diraccodec.decode(data, steps=0, restore=False))


def test_levels_below_the_lowest_trained_one_condition_the_unet_as_level_1():
    unet = random_unet().eval()
    residual, base = torch.rand(2, 1, 3, 32, 32).unbind(0)
    time = torch.tensor([0.5])
    with torch.no_grad():
        at = {level: unet(residual, time, base, torch.tensor([level])) for level in (0.0, 0.5, 1.0, 2.0)}
    assert torch.equal(at[0.0], at[1.0]) and torch.equal(at[0.5], at[1.0])
    assert not torch.equal(at[1.0], at[2.0])


def test_a_filter_made_for_other_base_weights_is_not_named_among_the_models_measured(installed):
    from diraccodec.modelfiles import models_in_use

    installed(shipped_base_id())
    assert models_in_use()["restoration"] is not None
    installed(b"\x00" * 8)  # listed, but decoding leaves it out
    assert models_in_use()["restoration"] is None


def test_base_weights_that_are_not_there_are_named_by_no_id(tmp_path):
    """A manifest may list a file that is gone: a report names only weights it could load."""
    import shutil

    from diraccodec.modelfiles import models_in_use

    shipped = DEFAULT_BASE_WEIGHTS.resolve()
    assert models_in_use()["base"] == shipped_base_id().hex()
    shutil.copy(shipped.parent / "manifest.json", tmp_path / "manifest.json")  # it lists the file, not here
    assert models_in_use(tmp_path / shipped.name)["base"] is None


def test_an_empty_weights_variable_counts_as_unset(small_image, monkeypatch):
    """`DIRAC_WEIGHTS=` (a shell's way to clear it) read as the current folder: "Is a directory"."""
    data = diraccodec.encode(small_image, 2, effort=1)
    expected = diraccodec.decode(data, 1).tobytes()
    restored = diraccodec.decode(data, 0).tobytes()  # 0 steps: the filter's own weights file
    assert restored != diraccodec.decode(data, 0, restore=False).tobytes()
    for variable in ("DIRAC_WEIGHTS", "DIRAC_DIFFUSION_WEIGHTS", "DIRAC_RESTORATION_WEIGHTS"):
        monkeypatch.setenv(variable, "")
    assert diraccodec.encode(small_image, 2, effort=1) == data
    assert diraccodec.decode(data, 1).tobytes() == expected
    assert diraccodec.decode(data, 0).tobytes() == restored


def test_a_base_of_any_size_is_restored_as_if_its_edges_ran_on_to_the_size_multiple():
    """Sides off the U-Net's multiple are padded by repeating the last row and column, the
    right amount on each axis: a zero border or the axes swapped would change the edges."""
    model = random_restorer()
    base, level = torch.rand(1, 3, 20, 26), torch.tensor([2.5])
    assert model.size_multiple == 8  # 20 and 26 take 4 rows and 6 columns
    rows, columns = torch.arange(24).clamp(max=19), torch.arange(32).clamp(max=25)
    padded = base[..., rows[:, None], columns]
    with torch.no_grad():
        restored = model.restore(base, level)
        expected = model.restore(padded, level)[..., :20, :26]
    assert restored.shape == base.shape and (restored - base).abs().mean() > 0.01
    torch.testing.assert_close(restored, expected, rtol=0, atol=1e-6)


def test_the_restored_8_bit_pixels_are_rounded_to_the_nearest_level_not_truncated():
    """A correction of +0.7 grey levels must give v + 1 and one of -0.3 must keep v:
    truncation would bias every pixel of a 0-step decode down by half a level."""
    unet = ResidualUNet(ResidualUNetConfig(widths=(8, 16, 16))).eval()  # conv_out is zero
    with torch.no_grad():  # a constant correction per channel: red +0.7, green -0.3, blue 0 levels
        unet.conv_out.bias.copy_(torch.tensor([0.7, -0.3, 0.0]).repeat_interleave(4) / 255 / RESIDUAL_SCALE)
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([values] * 3, axis=-1)
    restored = Restorer(RestorationFilter(unet).eval()).restore(rgb, 3.0).astype(np.int16)
    every = np.arange(256, dtype=np.int16).reshape(16, 16)
    np.testing.assert_array_equal(restored[..., 0], np.minimum(every + 1, 255))
    np.testing.assert_array_equal(restored[..., 1], every)
    np.testing.assert_array_equal(restored[..., 2], every)


def test_the_shipped_filter_runs_its_unet_at_the_time_it_was_trained_at(small_image):
    """The filter is the U-Net's prediction from no noise at diffusion time 0.1 (the best start
    measured, against 0.4, and the time the shipped filter was trained at); another time is
    another filter. On the base decode of a real crop."""
    from diraccodec.modelfiles import DEFAULT_RESTORATION_WEIGHTS, load_restoration_weights

    weights = load_restoration_weights(DEFAULT_RESTORATION_WEIGHTS)
    assert weights is not None
    crop = small_image.crop((0, 0, 64, 64))
    decoded = diraccodec.decode(diraccodec.encode(crop, 3, effort=1), steps=0, restore=False)
    base = torch.from_numpy(np.asarray(decoded, np.float32) / 255).permute(2, 0, 1)[None]
    level = torch.tensor([3.0])
    with torch.no_grad():
        correction = weights.model(base, level)
        at = {time: weights.model.unet(torch.zeros_like(base), torch.tensor([time]), base, level) * RESIDUAL_SCALE
              for time in (0.1, 0.4)}
    torch.testing.assert_close(correction, at[0.1], rtol=0, atol=1e-6)
    assert (at[0.4] - at[0.1]).abs().max() > 1 / 255  # the time visibly changes the correction
