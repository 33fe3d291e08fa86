"""The diffusion decoder with a small, briefly trained model: knob, seeds, tiles, errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import diraccodec
from diraccodec.diffusion.sampler import (
    Finishing,
    SampledResidual,
    SamplerSettings,
    per_level,
    sample_residual,
    sample_residual_parts,
)
from diraccodec.diffusion.schedule import RESIDUAL_SCALE, signal_level
from diraccodec.errors import InvalidOptionError, WrongWeightsError
from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS, export_diffusion_weights
from diraccodec.transforms.layers import periodic_component
from tests.conftest import random_unet


def test_same_seed_same_pixels_other_seed_other_pixels(small_image, diffusion_weights):
    data = diraccodec.encode(small_image, 3)
    base = np.asarray(diraccodec.decode(data, steps=0))
    first = np.asarray(diraccodec.decode(data, steps=4, seed=7, diffusion_weights=diffusion_weights))
    again = np.asarray(diraccodec.decode(data, steps=4, seed=7, diffusion_weights=diffusion_weights))
    default = np.asarray(diraccodec.decode(data, steps=4, diffusion_weights=diffusion_weights))
    assert first.shape == base.shape
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(default, np.asarray(diraccodec.decode(data, steps=4, seed=0,
                                                                        diffusion_weights=diffusion_weights)))


def test_sampler_is_seeded_and_tile_invariant():
    model = random_unet()
    base = torch.rand(1, 3, 200, 264)
    # neither the kept noise nor the detail gain's blur may show tiles
    finishing = {"residual_gain": (1.3,), "kept_noise": (0.5,), "detail_gain": (2.0,)}
    settings = SamplerSettings(tile=64, margin=96, **finishing)
    whole = sample_residual(model, base, 3.0, 3, seed=1, settings=SamplerSettings(tile=4096, **finishing))
    tiled = sample_residual(model, base, 3.0, 3, seed=1, settings=settings)
    other = sample_residual(model, base, 3.0, 3, seed=2, settings=settings)
    assert whole.shape == base.shape
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)
    assert (other - whole).abs().mean() > 1e-3


def test_zero_steps_is_the_base_and_the_residual_respects_the_bound():
    model = random_unet()
    base = torch.rand(1, 3, 40, 56)
    assert torch.equal(sample_residual(model, base, 2.0, 0, seed=0), torch.zeros_like(base))
    settings = SamplerSettings(bound_low_level=0.05, bound_high_level=0.01)
    residual = sample_residual(model, base, 8.0, 2, seed=0, settings=settings)
    assert residual.abs().max() <= 0.01 + 1e-6


def test_the_grid_ends_at_the_end_time_and_one_step_does_not_depend_on_it():
    from diraccodec.diffusion.schedule import respaced_times

    grid = respaced_times(3, 0.4, 0.1)
    torch.testing.assert_close(grid, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))
    model = random_unet()
    base = torch.rand(1, 3, 40, 56)
    late, early = SamplerSettings(end_time=0.1), SamplerSettings(end_time=0.0)
    assert torch.equal(sample_residual(model, base, 4.0, 1, 0, late), sample_residual(model, base, 4.0, 1, 0, early))
    assert not torch.equal(sample_residual(model, base, 4.0, 3, 0, late),
                           sample_residual(model, base, 4.0, 3, 0, early))


def test_per_level_values_interpolate_between_levels_and_hold_beyond():
    values = (1.5, 1.2, 1.0)
    assert [per_level(values, level) for level in (0.5, 1, 2, 3, 8)] == [1.5, 1.5, 1.2, 1.0, 1.0]
    assert per_level(values, 1.5) == pytest.approx(1.35)
    assert per_level((0.3,), 6.0) == 0.3


def test_finishing_gain_and_kept_noise_act_on_the_last_prediction_and_the_noise_left():
    model = random_unet()
    base = torch.rand(1, 3, 64, 64)
    plain = SamplerSettings(tile=4096)
    parts = sample_residual_parts(model, base, 1.5, 3, 7, plain)
    assert torch.equal(sample_residual(model, base, 1.5, 3, 7, plain), parts.prediction)  # (1.0,), (0.0,): as before
    finishing = SamplerSettings(tile=4096, residual_gain=(1.5, 1.0), kept_noise=(0.5, 0.0))
    torch.testing.assert_close(sample_residual(model, base, 1.5, 3, 7, finishing),
                               1.25 * parts.prediction + 0.25 * parts.noise_left)
    assert parts.noise_left.abs().mean() > 1e-3
    # kept noise 1 after one step: the DDIM state at the grid's end, over sqrt(a), from the start noise
    one = sample_residual_parts(model, base, 2.0, 1, 7, plain)
    a_start, a_end = (signal_level(torch.tensor(t)).item() for t in (plain.start_time, plain.end_time))
    start = torch.randn(base.shape, generator=torch.Generator().manual_seed(7)) * (1 - a_start) ** 0.5
    predicted, scale = one.prediction / RESIDUAL_SCALE, RESIDUAL_SCALE / a_end**0.5
    start_noise = (start - a_start**0.5 * predicted) / (1 - a_start) ** 0.5
    state_at_end = a_end**0.5 * predicted + (1 - a_end) ** 0.5 * start_noise
    torch.testing.assert_close(one.prediction + one.noise_left, state_at_end * scale, atol=1e-5, rtol=1e-5)
    # a grid ending at 0 leaves no noise to keep
    clean = sample_residual_parts(model, base, 2.0, 3, 7, SamplerSettings(tile=4096, end_time=0.0))
    assert clean.noise_left.abs().max() < 1e-6


def test_fewer_steps_than_full_steps_mix_the_plain_prediction_and_the_finished_one():
    torch.manual_seed(0)
    parts = SampledResidual(torch.randn(1, 3, 40, 52), torch.randn(1, 3, 40, 52))
    settings = SamplerSettings(residual_gain=(1.2,), detail_gain=(2.6,), kept_noise=(0.4,), full_steps=20)
    full = settings.finishing(1.0)
    assert settings.finishing(1.0, 20) == settings.finishing(1.0, 50) == full
    assert settings.finishing(1.0, 5) == Finishing(1.05, 1.4, 0.1, 1.0, match_share=0.25)
    for steps in (1, 5, 13):
        share = steps / 20
        torch.testing.assert_close(parts.finished(settings.finishing(1.0, steps)),
                                   (1 - share) * parts.prediction + share * parts.finished(full))
    # files from before the ramp: the whole finishing at any count
    assert SamplerSettings(residual_gain=(1.2,), kept_noise=(0.4,)).finishing(2.0, 1) == Finishing(1.2, 1.2, 0.4)
    with pytest.raises(ValueError, match="full_steps"):
        SamplerSettings(full_steps=-1)


def test_decoding_applies_the_share_of_the_finishing_its_steps_earn():
    from diraccodec.diffusion.decoder import DiffusionDecoder

    settings = SamplerSettings(residual_gain=(1.0,), detail_gain=(3.0,), kept_noise=(0.5,), full_steps=4)
    decoder = DiffusionDecoder(random_unet(), settings)
    base_rgb = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    for steps, share in [(2, 0.5), (4, 1.0)]:
        decoded = decoder.enhance(base_rgb, 2.0, steps, seed=3)
        base, parts = decoder.sample(base_rgb, 2.0, steps, seed=3)
        expected = decoder.to_image(base, parts.finished(Finishing(1.0, 1 + 2 * share, 0.5 * share)))
        np.testing.assert_array_equal(decoded, expected)
        if share < 1:  # not the whole finishing
            assert not np.array_equal(decoded, decoder.to_image(base, parts.finished(Finishing(1.0, 3.0, 0.5))))


def test_detail_gain_scales_only_what_the_blur_takes_away():
    torch.manual_seed(0)
    prediction, noise_left = torch.randn(1, 3, 40, 52), torch.randn(1, 3, 40, 52)
    parts = SampledResidual(prediction, noise_left)
    # one gain for both parts: exactly the gain on the whole prediction, as in session 11's files
    assert torch.equal(parts.finished(Finishing(1.6, 1.6, 0.45)), 1.6 * prediction + 0.45 * noise_left)
    # otherwise: the blur's output scaled by the gain, the rest by the detail gain (a 2-D
    # Gaussian of sigma 1.5 over 3-sigma taps, edges replicated, computed here independently)
    sigma, radius = 1.5, 5
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).expand(3, 1, -1, -1)
    padded = torch.nn.functional.pad(prediction, (radius,) * 4, mode="replicate")
    smooth = torch.nn.functional.conv2d(padded, kernel, groups=3)
    torch.testing.assert_close(parts.finished(Finishing(0.9, 2.5, 0.3, sigma)),
                               0.9 * smooth + 2.5 * (prediction - smooth) + 0.3 * noise_left)
    # a flat prediction has no detail, up to its edges, at any size down to one pixel
    for shape in [(1, 3, 1, 1), (1, 3, 1, 7), (1, 3, 9, 2)]:
        flat = SampledResidual(torch.full(shape, 0.2), torch.zeros(shape))
        torch.testing.assert_close(flat.finished(Finishing(1.0, 3.0, 0.0)), torch.full(shape, 0.2))


def test_lattice_removal_takes_out_a_grid_locked_pattern_and_keeps_the_rest():
    torch.manual_seed(0)
    height, width = 150, 171  # not multiples of the period
    rows, columns = torch.meshgrid(torch.arange(height) / height, torch.arange(width) / width, indexing="ij")
    smooth = torch.stack([torch.sin(3 * rows + 2 * columns), rows * columns, 0.5 * torch.cos(4 * columns)])[None]
    cell = torch.randn(1, 3, 8, 8)
    lattice = (cell - cell.mean(dim=(2, 3), keepdim=True)).repeat(1, 1, 19, 22)[..., :height, :width]
    found = periodic_component(smooth + lattice, 8, 2.0)
    interior = (..., slice(40, -40), slice(40, -40))  # beyond the measuring window's reach of the edges
    torch.testing.assert_close(found[interior], lattice[interior], atol=0.01, rtol=0)
    assert (found - lattice).abs().max() < 0.15  # near the edges too, within 15% of the lattice's height
    assert periodic_component(smooth, 8, 2.0).abs().max() < 0.02  # smooth slopes are no lattice
    # in the finishing: taken out of the prediction before the gains, the noise left untouched
    noise_left = torch.randn(1, 3, height, width)
    parts = SampledResidual(smooth + lattice, noise_left)
    cleaned = parts.finished(Finishing(1.2, 1.2, 0.5, lattice_period=8, lattice_cells=2.0))
    torch.testing.assert_close(cleaned, 1.2 * (smooth + lattice - found) + 0.5 * noise_left)
    assert (cleaned - 0.5 * noise_left - 1.2 * smooth)[interior].abs().max() < 0.02
    # period 0 (the default, and files from before session 13): the prediction as it is
    assert torch.equal(parts.finished(Finishing(1.2, 1.2, 0.5)), 1.2 * (smooth + lattice) + 0.5 * noise_left)
    assert SamplerSettings().finishing(1.0).lattice_period == 0
    for shape in [(1, 3, 1, 1), (1, 3, 5, 9)]:  # any size, down to one pixel
        flat = torch.full(shape, 0.3)
        torch.testing.assert_close(flat - periodic_component(flat, 8, 2.0), flat)
    with pytest.raises(ValueError, match="lattice_period"):
        SamplerSettings(lattice_period=-8)


def test_settings_without_a_detail_gain_use_the_gain_for_all_of_the_prediction():
    old = SamplerSettings(residual_gain=(1.6, 1.2), kept_noise=(0.45, 0.3))  # as session 11 wrote them
    assert old.finishing(1.5) == Finishing(1.4, 1.4, 0.375, 1.0)
    new = SamplerSettings(residual_gain=(1.0,), detail_gain=[2.6, 1.8], kept_noise=(0.3,), detail_sigma=0.8)
    assert new.finishing(2.0) == Finishing(1.0, 1.8, 0.3, 0.8) and new.detail_gain == (2.6, 1.8)
    with pytest.raises(ValueError, match="detail_sigma"):
        SamplerSettings(detail_gain=(2.0,), detail_sigma=0.0)


def test_sampler_settings_can_be_replaced_in_a_weights_file(small_image, random_diffusion_weights, tmp_path):
    from diraccodec.modelfiles import load_diffusion_weights, replace_sampler_settings

    copy = tmp_path / "diffusion.safetensors"
    settings = SamplerSettings(residual_gain=(1.0,), kept_noise=(0.5, 0.2), detail_gain=(2.0, 0.5),
                               detail_sigma=1.5)
    replace_sampler_settings(random_diffusion_weights, settings, copy)
    before, after = load_diffusion_weights(random_diffusion_weights), load_diffusion_weights(copy)
    assert copy.stat().st_mode & 0o777 == 0o644  # readable by all, like the files it replaces
    assert after.settings == settings and after.base_weights_id == before.base_weights_id
    assert after.metadata["info"] == before.metadata["info"]
    for name, tensor in before.model.state_dict().items():
        assert torch.equal(tensor, after.model.state_dict()[name])
    data = diraccodec.encode(small_image, 2)
    decoded = [np.asarray(diraccodec.decode(data, steps=2, diffusion_weights=w), dtype=np.int16)
               for w in (random_diffusion_weights, copy)]
    assert np.abs(decoded[0] - decoded[1]).mean() > 0.5


def test_diffusion_for_other_base_weights_is_refused(small_image, tmp_path):
    other = tmp_path / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), b"\x00" * 8, other, {"purpose": "test"})
    data = diraccodec.encode(small_image, 3)
    with pytest.raises(WrongWeightsError, match="trained on base weights"):
        diraccodec.decode(data, steps=2, diffusion_weights=other)


def test_steps_without_shipped_diffusion_weights_say_so(small_image, monkeypatch, tmp_path):
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(tmp_path / "absent.safetensors"))
    from diraccodec import api
    from diraccodec.modelfiles import load_diffusion_weights

    api._diffusion.cache_clear()
    load_diffusion_weights.cache_clear()
    try:
        with pytest.raises(InvalidOptionError, match="not available yet"):
            diraccodec.decode(diraccodec.encode(small_image, 2), steps=5)
    finally:  # forget the answer for the patched path
        api._diffusion.cache_clear()
        load_diffusion_weights.cache_clear()
    assert DEFAULT_BASE_WEIGHTS.exists()


def test_export_command_recognises_a_diffusion_checkpoint(diffusion_weights, tmp_path):
    from click.testing import CliRunner

    from diraccodec.cli import main

    checkpoint = diffusion_weights.parent / "ck.safetensors"
    result = CliRunner().invoke(main, ["train", "export", str(checkpoint), str(tmp_path / "d.safetensors")])
    assert result.exit_code == 0 and "diffusion decoder" in result.output


def test_fast_decoding_repeats_itself_and_stays_close_to_the_reproducible_one(small_image, random_diffusion_weights):
    data = diraccodec.encode(small_image, 2)
    decode = functools.partial(diraccodec.decode, data, steps=3, seed=5, diffusion_weights=random_diffusion_weights)
    fast, again, exact = (np.asarray(decode(fast=f), dtype=np.int16) for f in (True, True, False))
    np.testing.assert_array_equal(fast, again)
    base = np.asarray(diraccodec.decode(data, steps=0), dtype=np.int16)
    assert np.abs(exact - base).mean() > 1  # the sampler really changed the image
    assert np.abs(fast - exact).max() <= 2  # and the kernels only round differently


def test_renoising_sampler_is_seeded_tile_invariant_and_differs_from_ddim():
    model = random_unet()
    base = torch.rand(1, 3, 72, 88)
    renoise = SamplerSettings(renoise=True, tile=4096)
    whole = sample_residual(model, base, 3.0, 4, seed=3, settings=renoise)
    tiled = sample_residual(model, base, 3.0, 4, seed=3, settings=SamplerSettings(renoise=True, tile=32, margin=96))
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)
    torch.testing.assert_close(sample_residual(model, base, 3.0, 4, seed=3, settings=renoise), whole, atol=0, rtol=0)
    ddim = sample_residual(model, base, 3.0, 4, seed=3, settings=SamplerSettings(tile=4096))
    assert (ddim - whole).abs().mean() > 1e-4
    # one step draws only the starting noise: both updates agree there
    torch.testing.assert_close(sample_residual(model, base, 3.0, 1, seed=3, settings=renoise),
                               sample_residual(model, base, 3.0, 1, seed=3, settings=SamplerSettings(tile=4096)))


def test_own_prediction_training_feeds_the_model_its_first_step():
    from diraccodec.training.diffusion import diffusion_loss

    model = random_unet()
    batch, base = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    levels = torch.tensor([2.0, 5.0])
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    torch.manual_seed(0)
    truth = diffusion_loss(model, batch, base, levels, 0.7)
    torch.manual_seed(0)
    own = diffusion_loss(model, batch, base, levels, 0.7, own_prediction_fraction=1.0)
    handle.remove()
    assert len(seen) == 1 + 2  # one pass with the truth; a first step, then the trained pass
    assert own["loss"].requires_grad and torch.isfinite(own["loss"])
    assert not torch.equal(seen[0], seen[2])  # the trained pass saw another input
    assert truth["residual_mse"] != own["residual_mse"]


def test_relative_loss_weighs_every_crop_by_its_own_base_error():
    from diraccodec.training.diffusion import diffusion_loss

    class KeepsTheBase(torch.nn.Module):  # predicts a zero residual: exactly the base image
        def __init__(self) -> None:
            super().__init__()
            self.gain = torch.nn.Parameter(torch.zeros(()))

        def forward(self, noisy, time, base, levels):
            return noisy * self.gain

    batch = torch.rand(2, 3, 16, 16)
    base = batch.clone()
    base[0] += 0.02 * torch.randn(3, 16, 16)  # a fine level's small residual
    base[1] += 0.2 * torch.randn(3, 16, 16)  # a coarse level's large one
    base = base.clamp(0, 1)  # as the base codec's reconstructions are
    levels = torch.tensor([8.0, 1.0])

    def distance(a, b):
        return (a - b).abs().mean(dim=(1, 2, 3))
    absolute = diffusion_loss(KeepsTheBase(), batch, base, levels, 0.7)
    relative = diffusion_loss(KeepsTheBase(), batch, base, levels, 0.7, distance, 2.0, relative_loss=True)
    # Keeping the base scores 1 per crop on each term, whatever the residual's size.
    assert relative["loss"].item() == pytest.approx(1 + 2.0, rel=1e-4)
    assert absolute["loss"].item() > 1.5  # dominated by the coarse crop's large residual
    relative["loss"].backward()


def train_recording_batches(sample_image, tmp_path, monkeypatch, **options):
    """Train a tiny decoder on the sample image; every batch's (crops, bases, levels) and the options."""
    from diraccodec.training import diffusion

    seen = []

    def recording_loss(unet, batch, base, levels, *args, **kwargs):
        seen.append((batch, base, levels))
        return real_loss(unet, batch, base, levels, *args, **kwargs)

    real_loss = diffusion.diffusion_loss
    monkeypatch.setattr(diffusion, "diffusion_loss", recording_loss)
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    sample_image.save(photos / "a.png")
    settings = diffusion.DiffusionTrainingOptions(
        data=(photos,), checkpoint=tmp_path / "ck.safetensors", patch_size=64, widths=(8, 16, 16),
        checkpoint_minutes=1e9, threads=1, **options,
    )
    diffusion.train_diffusion(settings)
    return seen, settings


def test_diffusion_training_draws_levels_only_from_the_level_range(sample_image, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from diraccodec.cli import main

    seen, _ = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=3, batch_size=4,
                                      level_range=(6.5, 7.0))
    drawn = [level for _, _, levels in seen for level in levels.tolist()]
    assert len(drawn) == 12 and all(6.5 <= level <= 7.0 for level in drawn) and len(set(drawn)) > 1
    result = CliRunner().invoke(main, ["train", "diffusion", "--data", str(tmp_path / "photos"), "--level-range", "0,9",
                                       "--checkpoint", str(tmp_path / "other.safetensors"), "--steps", "1"])
    assert result.exit_code == 2 and "--level-range 0,9 is outside the base's levels 1-8" in result.output


def test_a_decoder_trained_on_the_filter_enhances_its_output_and_needs_it(small_image, tmp_path):
    from diraccodec import api
    from diraccodec.modelfiles import load_restoration_weights

    restoration = load_restoration_weights()
    assert restoration is not None, "the shipped restoration filter is needed"
    base_id = restoration.base_weights_id
    on_filter = tmp_path / "on-filter" / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), base_id, on_filter, {"purpose": "test"},
                             restoration_weights_id=restoration.weights_id)
    on_synthesis = tmp_path / "on-synthesis" / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), base_id, on_synthesis, {"purpose": "test"})
    data = diraccodec.encode(small_image, 2, search_passes=0)
    synthesis = np.asarray(diraccodec.decode(data, steps=0, restore=False))
    restored = np.asarray(diraccodec.decode(data, steps=0))
    assert not np.array_equal(synthesis, restored)

    decoded = np.asarray(diraccodec.decode(data, steps=2, seed=1, diffusion_weights=on_filter))
    plain = api.get_diffusion(api.get_codec(), on_synthesis)
    assert plain.restorer is None
    assert np.array_equal(decoded, plain.enhance(restored, 2, 2, seed=1))
    assert not np.array_equal(decoded, plain.enhance(synthesis, 2, 2, seed=1))

    other = tmp_path / "other" / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), base_id, other, {"purpose": "test"},
                             restoration_weights_id=b"\x01" * 8)
    with pytest.raises(WrongWeightsError, match="restoration weights 0101010101010101, which are not installed"):
        diraccodec.decode(data, steps=2, diffusion_weights=other)


def test_training_on_the_filter_feeds_the_model_the_filter_output(sample_image, tmp_path, monkeypatch):
    from diraccodec.modelfiles import (
        DEFAULT_RESTORATION_WEIGHTS,
        load_base_weights,
        load_diffusion_weights,
        load_restoration_weights,
    )
    from diraccodec.training import diffusion

    seen, options = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=1, batch_size=2,
                                            restoration_weights=DEFAULT_RESTORATION_WEIGHTS)
    batch, base, levels = seen[0]
    restoration = load_restoration_weights(DEFAULT_RESTORATION_WEIGHTS.resolve())
    with torch.no_grad():
        synthesis = load_base_weights(DEFAULT_BASE_WEIGHTS.resolve()).model.reconstruct(batch, levels - 1)
        expected = restoration.model.restore(synthesis, levels).clamp(0, 1).mul(255).round().div(255)
    assert torch.allclose(base, expected, atol=1e-6) and not torch.allclose(base, synthesis, atol=1e-3)

    diffusion.export_diffusion_checkpoint(options.checkpoint, tmp_path / "w" / "diffusion.safetensors")
    exported = load_diffusion_weights(tmp_path / "w" / "diffusion.safetensors")
    assert exported.restoration_weights_id == restoration.weights_id


@pytest.mark.parametrize("level", [1, 4])
def test_shipped_decoder_trades_a_little_psnr_for_much_lower_lpips(level):
    from PIL import Image

    from diraccodec.evaluation.metrics import lpips
    from tests.conftest import SAMPLE, psnr

    with Image.open(SAMPLE) as image:
        photo = image.convert("RGB").crop((64, 64, 320, 320))
    data = diraccodec.encode(photo, level, search_passes=0)
    restored, partway, enhanced = (diraccodec.decode(data, steps=steps) for steps in (0, 5, 20))
    # measured: -31.5% (level 1, steered by the file's detail map), -38.5% (level 4) at 20
    # steps, for 0.62 and 0.61 dB
    assert lpips(photo, enhanced) < 0.8 * lpips(photo, restored)
    assert psnr(photo, enhanced) > psnr(photo, restored) - 1.5
    # the knob: 5 steps lie between (measured 0.1482 of 0.1882-0.1289; 0.0364 of 0.0551-0.0339)
    assert lpips(photo, enhanced) < lpips(photo, partway) < lpips(photo, restored)
    assert psnr(photo, enhanced) < psnr(photo, partway) < psnr(photo, restored)


def input_radius(model, size: int = 384) -> int:
    """How far from the centre the input pixels lie that move the centre output pixel."""
    noisy = torch.zeros(1, 3, size, size, requires_grad=True)
    out = model(noisy, torch.tensor([0.3]), torch.full((1, 3, size, size), 0.5), torch.tensor([2.0]))
    out[0, 0, size // 2, size // 2].backward()
    rows, columns = torch.nonzero(noisy.grad[0].abs().sum(0) > 0, as_tuple=True)
    return int(max((rows - size // 2).abs().max(), (columns - size // 2).abs().max()))


def test_a_deepened_unet_computes_the_same_function_and_tiles_with_a_wider_margin():
    model = random_unet()
    deeper = model.deepened(2)
    noisy, base = torch.randn(1, 3, 48, 64), torch.rand(1, 3, 48, 64)
    time, level = torch.tensor([0.3]), torch.tensor([2.0])
    torch.testing.assert_close(deeper(noisy, time, base, level), model(noisy, time, base, level), atol=0, rtol=0)
    with pytest.raises(ValueError, match="cannot deepen"):
        deeper.deepened(1)
    for parameter in deeper.parameters():  # the added blocks no longer the identity: a wider view
        parameter.data.normal_(0, 0.1)
    shallow_radius, deep_radius = input_radius(model), input_radius(deeper)
    assert shallow_radius <= model.receptive_radius < 96 and deep_radius <= deeper.receptive_radius
    assert deep_radius > 96 and deeper.tile_margin(96) % 8 == 0 and deeper.tile_margin(96) >= deep_radius
    image = torch.rand(1, 3, 200, 232)
    whole = sample_residual(deeper, image, 3.0, 2, seed=1, settings=SamplerSettings(tile=4096))
    tiled = sample_residual(deeper, image, 3.0, 2, seed=1, settings=SamplerSettings(tile=64, margin=16))
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)


def test_training_with_more_blocks_deepens_the_checkpoint_and_resumes_it(sample_image, tmp_path, monkeypatch):
    from diraccodec.errors import DiracError
    from diraccodec.restoration.unet import ResidualUNet, ResidualUNetConfig
    from diraccodec.training.checkpoint import load_checkpoint, load_checkpoint_metadata
    from diraccodec.training.diffusion import deepen_checkpoint

    _, settings = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=2, batch_size=2)
    checkpoint = settings.checkpoint
    shallow = ResidualUNet(ResidualUNetConfig.from_fields(load_checkpoint_metadata(checkpoint).metadata["config"]))
    load_checkpoint(checkpoint, shallow, None, None)
    assert deepen_checkpoint(checkpoint, 2) and not deepen_checkpoint(checkpoint, 2)
    state = load_checkpoint_metadata(checkpoint)
    deep = ResidualUNet(ResidualUNetConfig.from_fields(state.metadata["config"]))
    load_checkpoint(checkpoint, deep, None, None)
    assert state.step == 2 and deep.config.blocks == 2 and deep.config.widths == (8, 16, 16)
    noisy, base = torch.randn(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    arguments = (noisy, torch.tensor([0.2]), base, torch.tensor([4.0]))
    torch.testing.assert_close(deep(*arguments), shallow(*arguments), atol=0, rtol=0)
    with pytest.raises(DiracError, match="has 2 blocks per resolution"):
        deepen_checkpoint(checkpoint, 1)
    seen, _ = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=3, batch_size=2)
    assert len(seen) == 1  # resumed at step 2, at the checkpoint's depth
    assert load_checkpoint_metadata(checkpoint).metadata["config"]["blocks"] == 2


def test_a_grid_power_below_one_takes_short_steps_first_and_applies_at_its_level():
    from diraccodec.diffusion.schedule import respaced_times

    torch.testing.assert_close(respaced_times(4, 0.4, 0.1, 1.0), torch.linspace(0.4, 0.1, 5, dtype=torch.float64))
    grid = respaced_times(20, 0.4, 0.1, 0.4)
    assert grid[0] == pytest.approx(0.4) and grid[-1] == pytest.approx(0.1)
    sizes = (grid[:-1] - grid[1:]).tolist()
    assert all(size > 0 for size in sizes) and sizes == sorted(sizes)  # the steps grow
    assert grid[-2] == pytest.approx(0.1 + 0.3 / 20**0.4)  # the last prediction comes at a noisier time
    model = random_unet()
    base = torch.rand(1, 3, 40, 56)
    even, short_first = SamplerSettings(), SamplerSettings(grid_power=(0.4, 1.0))
    assert not torch.equal(sample_residual(model, base, 1.0, 3, 0, even),
                           sample_residual(model, base, 1.0, 3, 0, short_first))
    assert torch.equal(sample_residual(model, base, 3.0, 3, 0, even),
                       sample_residual(model, base, 3.0, 3, 0, short_first))
    with pytest.raises(ValueError, match="grid_power"):
        SamplerSettings(grid_power=(0.0,))
