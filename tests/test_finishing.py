"""The finishing: gains, kept noise, the share that fewer steps apply, the lattice, bands and
the memory they save, and its settings."""

from __future__ import annotations

import functools
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode  # what torch's own FLOP counter is built on
from torch.utils._pytree import tree_flatten

import diraccodec
from diraccodec.diffusion.finishing import Finishing, FinishingSettings, finish
from diraccodec.diffusion.sampler import SampledResidual, SamplerSettings, sample_residual
from diraccodec.diffusion.schedule import per_level
from diraccodec.image.filters import periodic_component
from tests.conftest import random_unet


def test_per_level_values_interpolate_between_levels_and_hold_beyond():
    values = (1.5, 1.2, 1.0)
    assert [per_level(values, level) for level in (0.5, 1, 2, 3, 8)] == [1.5, 1.5, 1.2, 1.0, 1.0]
    assert per_level(values, 1.5) == pytest.approx(1.35)
    assert per_level((0.3,), 6.0) == 0.3


def test_gain_and_kept_noise_act_on_the_last_prediction_and_the_noise_left():
    model = random_unet()
    base = torch.rand(1, 3, 64, 64)
    parts = sample_residual(model, base, 1.5, 3, 7, SamplerSettings(tile=4096))
    assert torch.equal(finish(parts, FinishingSettings().at(1.5, 3)), parts.prediction)  # the plain finishing
    finishing = FinishingSettings(residual_gain=(1.5, 1.0), kept_noise=(0.5, 0.0))
    torch.testing.assert_close(finish(parts, finishing.at(1.5, 3)), 1.25 * parts.prediction + 0.25 * parts.noise_left)
    assert parts.noise_left.abs().mean() > 1e-3


def test_fewer_steps_than_full_steps_mix_the_plain_prediction_and_the_finished_one():
    torch.manual_seed(0)
    parts = SampledResidual(torch.randn(1, 3, 40, 52), torch.randn(1, 3, 40, 52))
    settings = FinishingSettings(residual_gain=(1.2,), detail_gain=(2.6,), kept_noise=(0.4,), full_steps=20)
    full = settings.at(1.0)
    assert settings.at(1.0, 20) == settings.at(1.0, 50) == full
    assert settings.at(1.0, 5) == Finishing(1.05, 1.4, 0.1, 1.0, match_share=0.25)
    for steps in (1, 5, 13):
        share = steps / 20
        torch.testing.assert_close(finish(parts, settings.at(1.0, steps)),
                                   (1 - share) * parts.prediction + share * finish(parts, full))
    # full_steps 0: the whole finishing at any count
    assert FinishingSettings(residual_gain=(1.2,), kept_noise=(0.4,)).at(2.0, 1) == Finishing(1.2, 1.2, 0.4)
    with pytest.raises(ValueError, match="full_steps"):
        FinishingSettings(full_steps=-1)


def test_decoding_applies_the_share_of_the_finishing_its_steps_earn():
    from diraccodec.diffusion.decoder import DiffusionDecoder

    settings = FinishingSettings(residual_gain=(1.0,), detail_gain=(3.0,), kept_noise=(0.5,), full_steps=4)
    decoder = DiffusionDecoder(random_unet(), SamplerSettings(), settings)
    base_rgb = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    for steps, share in [(2, 0.5), (4, 1.0)]:
        decoded = decoder.enhance(base_rgb, 2.0, steps, seed=3)
        base, parts = decoder.sample(base_rgb, 2.0, steps, seed=3)
        expected = decoder.to_image(base, finish(parts, Finishing(1.0, 1 + 2 * share, 0.5 * share)))
        np.testing.assert_array_equal(decoded, expected)
        if share < 1:  # not the whole finishing
            assert not np.array_equal(decoded, decoder.to_image(base, finish(parts, Finishing(1.0, 3.0, 0.5))))


def test_decoding_with_steps_holds_three_image_sized_tensors_at_most(monkeypatch):
    """What grows with the image in a decode with steps, counted exactly: the peak bytes of
    tensors the size of the image's three float32 planes or larger, alive at once. The
    sampler keeps its state, the prediction and the noise it implies; the base stays 8-bit
    but for the tile at hand, and the finishing works in bands. (With a float base, a
    6-channel copy of the network's input, the whole image filtered at once and a new tensor
    for each update, it held nine.) Tiles and bands are set small, as they are on an image
    many times their size."""
    from diraccodec.diffusion import decoder as decoders
    from diraccodec.diffusion.detail_map import DetailMap, map_shape

    monkeypatch.setattr(decoders, "FINISH_BAND_SIDE", 128)  # bands of 64 rows here
    height, width = 1024, 384
    image_bytes = 3 * height * width * 4
    finishing = FinishingSettings(residual_gain=(1.0,), kept_noise=(0.3,), detail_gain=(2.6,), lattice_period=8,
                                  detail_match=(0.7,))  # every filter the shipped finishing has
    decoder = decoders.DiffusionDecoder(random_unet(), SamplerSettings(tile=128, margin=32), finishing)
    base = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    detail_map = DetailMap(32, np.full(map_shape(width, height, 32), -8))
    with LiveTensorBytes(smallest=image_bytes) as counted:
        decoded = decoder.enhance(base, 1.0, 3, 0, detail_map)
    assert np.abs(decoded.astype(np.int16) - base).mean() > 1  # the steps and the finishing ran
    assert counted.peak <= 3 * image_bytes * 1.01, counted.peak / image_bytes  # padding to the U-Net's multiple
    assert counted.peak >= 3 * image_bytes  # it does count them
    assert isinstance(decoded, np.ndarray) and torch.is_grad_enabled()


class LiveTensorBytes(TorchDispatchMode):
    """The peak bytes that storages of at least `smallest` bytes, made by torch operations
    under it, hold at once (tracked through the tensors that refer to them)."""

    def __init__(self, smallest: int) -> None:
        super().__init__()
        self.smallest, self.live, self.peak = smallest, 0, 0
        self.holders: dict[int, list[int]] = {}  # storage address -> [tensors, bytes]

    def _release(self, address: int) -> None:
        entry = self.holders[address]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.holders[address]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(result)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.untyped_storage().nbytes() < self.smallest:
                continue
            address = tensor.untyped_storage().data_ptr()
            if address not in self.holders:
                self.holders[address] = [0, tensor.untyped_storage().nbytes()]
                self.live += self.holders[address][1]
                self.peak = max(self.peak, self.live)
            self.holders[address][0] += 1
            weakref.finalize(tensor, self._release, address)
        return result


def test_detail_gain_scales_only_what_the_blur_takes_away():
    torch.manual_seed(0)
    prediction, noise_left = torch.randn(1, 3, 40, 52), torch.randn(1, 3, 40, 52)
    parts = SampledResidual(prediction, noise_left)
    # one gain for both parts: exactly the gain on the whole prediction
    assert torch.equal(finish(parts, Finishing(1.6, 1.6, 0.45)), 1.6 * prediction + 0.45 * noise_left)
    # otherwise: the blur's output scaled by the gain, the rest by the detail gain (a 2-D
    # Gaussian of sigma 1.5 over 3-sigma taps, edges replicated, computed here independently)
    sigma, radius = 1.5, 5
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).expand(3, 1, -1, -1)
    padded = torch.nn.functional.pad(prediction, (radius,) * 4, mode="replicate")
    smooth = torch.nn.functional.conv2d(padded, kernel, groups=3)
    torch.testing.assert_close(finish(parts, Finishing(0.9, 2.5, 0.3, sigma)),
                               0.9 * smooth + 2.5 * (prediction - smooth) + 0.3 * noise_left)
    # a flat prediction has no detail, up to its edges, at any size down to one pixel
    for shape in [(1, 3, 1, 1), (1, 3, 1, 7), (1, 3, 9, 2)]:
        flat = SampledResidual(torch.full(shape, 0.2), torch.zeros(shape))
        torch.testing.assert_close(finish(flat, Finishing(1.0, 3.0, 0.0)), torch.full(shape, 0.2))


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
    cleaned = finish(parts, Finishing(1.2, 1.2, 0.5, lattice_period=8, lattice_cells=2.0))
    torch.testing.assert_close(cleaned, 1.2 * (smooth + lattice - found) + 0.5 * noise_left)
    assert (cleaned - 0.5 * noise_left - 1.2 * smooth)[interior].abs().max() < 0.02
    # period 0 (the default): the prediction as it is
    assert torch.equal(finish(parts, Finishing(1.2, 1.2, 0.5)), 1.2 * (smooth + lattice) + 0.5 * noise_left)
    assert FinishingSettings().at(1.0).lattice_period == 0
    for shape in [(1, 3, 1, 1), (1, 3, 5, 9)]:  # any size, down to one pixel
        flat = torch.full(shape, 0.3)
        torch.testing.assert_close(flat - periodic_component(flat, 8, 2.0), flat)
    with pytest.raises(ValueError, match="lattice_period"):
        FinishingSettings(lattice_period=-8)


SHIPPED_LIKE = Finishing(1.0, 2.6, 0.3, 1.0, lattice_period=8, lattice_cells=2.0, detail_match=0.7)


def collect(bands: list, first: int, end: int, rows: torch.Tensor) -> None:
    bands.append((first, end, rows))


@pytest.mark.parametrize("finishing", [
    SHIPPED_LIKE,  # lattice, detail gain and the detail map
    Finishing(1.0, 1.3, 0.45, 1.0, lattice_period=8, lattice_cells=2.0),  # no map at this level
    Finishing(1.1, 2.0, 0.2, 1.5, lattice_period=12, lattice_cells=1.5, detail_match=0.5, match_share=0.7),
    Finishing(1.2, 1.2, 0.5),  # gains alone: nothing reaches across rows
])
def test_finishing_band_by_band_gives_the_whole_images_residual(finishing):
    """Bands as narrow as their alignment allows, on sizes that fill no whole period, block or
    band: each band's margin covers the filters' reach, so no row differs beyond float64
    rounding. (A margin of 64 rows, 4 short of the first finishing's reach of 68, leaves errors
    of 1e-7.)"""
    from diraccodec.diffusion.detail_map import DetailMap, map_shape
    from diraccodec.diffusion.finishing import finish_in_bands

    generator = torch.Generator().manual_seed(1)
    for height, width in [(301, 203), (77, 300), (530, 41)]:
        parts = SampledResidual(0.05 * torch.randn(1, 3, height, width, generator=generator, dtype=torch.float64),
                                0.02 * torch.randn(1, 3, height, width, generator=generator, dtype=torch.float64))
        codes = np.random.default_rng(0).integers(-20, -4, map_shape(width, height, 32))
        detail_map = DetailMap(32, codes)
        whole = finish(parts, finishing, detail_map)
        for band_pixels in (1, 5_000):
            spent = SampledResidual(parts.prediction.clone(), parts.noise_left.clone())
            bands: list[tuple[int, int, torch.Tensor]] = []
            finish_in_bands(spent, finishing, detail_map, functools.partial(collect, bands), band_pixels, consume=True)
            assert [first for first, _, _ in bands] == [0] + [end for _, end, _ in bands[:-1]]
            assert bands[-1][1] == height and (len(bands) > 1 or height <= 96)  # 96: lcm of a period of 12 and a block
            torch.testing.assert_close(torch.cat([rows for _, _, rows in bands], dim=-2), whole, atol=1e-13, rtol=0)
            if finishing.detail_match:  # the residual waited in the noise's place, not in a store of its own
                assert not torch.equal(spent.noise_left, parts.noise_left)
            else:
                assert torch.equal(spent.noise_left, parts.noise_left)


def test_the_decoder_finishes_a_large_image_in_bands_within_rounding_of_the_whole(monkeypatch):
    from diraccodec.diffusion import decoder as decoders
    from diraccodec.diffusion.detail_map import DetailMap, map_shape

    monkeypatch.setattr(decoders, "FINISH_BAND_SIDE", 32)  # bands of 1,024 pixels: 16 rows here
    decoder = decoders.DiffusionDecoder(random_unet(), SamplerSettings(), FinishingSettings())
    base_rgb = (np.random.default_rng(0).random((120, 64, 3)) * 255).astype(np.uint8)
    detail_map = DetailMap(32, np.full(map_shape(64, 120, 32), -8))
    base, parts = decoder.sample(base_rgb, 2.0, 2, seed=3)
    expected = decoder.to_image(base, finish(parts, SHIPPED_LIKE, detail_map))
    banded = decoder.finished_image(base, parts, SHIPPED_LIKE, detail_map)
    difference = np.abs(banded.astype(np.int16) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001
    assert np.abs(expected.astype(np.int16) - base_rgb).mean() > 1  # the finishing did change the image


def test_settings_without_a_detail_gain_use_the_gain_for_all_of_the_prediction():
    one_gain = FinishingSettings(residual_gain=(1.6, 1.2), kept_noise=(0.45, 0.3))
    assert one_gain.at(1.5) == Finishing(1.4, 1.4, 0.375, 1.0)
    two_gains = FinishingSettings(residual_gain=(1.0,), detail_gain=[2.6, 1.8], kept_noise=(0.3,), detail_sigma=0.8)
    assert two_gains.at(2.0) == Finishing(1.0, 1.8, 0.3, 0.8) and two_gains.detail_gain == (2.6, 1.8)
    with pytest.raises(ValueError, match="detail_sigma"):
        FinishingSettings(detail_gain=(2.0,), detail_sigma=0.0)


def test_settings_can_be_replaced_in_a_weights_file(small_image, random_diffusion_weights, tmp_path):
    from diraccodec.modelfiles import load_diffusion_weights, replace_diffusion_settings

    copy = tmp_path / "diffusion.safetensors"
    finishing = FinishingSettings(residual_gain=(1.0,), kept_noise=(0.5, 0.2), detail_gain=(2.0, 0.5),
                                  detail_sigma=1.5)
    replace_diffusion_settings(random_diffusion_weights, copy, finishing=finishing)
    before, after = load_diffusion_weights(random_diffusion_weights), load_diffusion_weights(copy)
    assert copy.stat().st_mode & 0o777 == 0o644  # readable by all, like the files it replaces
    assert after.finishing == finishing and after.settings == before.settings
    assert after.base_weights_id == before.base_weights_id and after.metadata["info"] == before.metadata["info"]
    for name, tensor in before.model.state_dict().items():
        assert torch.equal(tensor, after.model.state_dict()[name])
    data = diraccodec.encode(small_image, 2)
    decoded = [np.asarray(diraccodec.decode(data, steps=2, diffusion_weights=w), dtype=np.int16)
               for w in (random_diffusion_weights, copy)]
    assert np.abs(decoded[0] - decoded[1]).mean() > 0.5


def test_a_weights_file_with_an_unknown_setting_is_refused(random_diffusion_weights, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from diraccodec.errors import DiracError
    from diraccodec.modelfiles import load_diffusion_weights, record_in_manifest

    with safe_open(str(random_diffusion_weights), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    for name, record, message in (("unknown", json.loads(metadata["sampler"]) | {"sharpening": 2.0},
                                   "unknown sampler settings"),
                                  ("list", ["eta"], "the sampler record is not a JSON object")):
        odd = tmp_path / name / "diffusion.safetensors"
        odd.parent.mkdir()
        save_file(tensors, str(odd), metadata=metadata | {"sampler": json.dumps(record)})
        record_in_manifest(odd)
        with pytest.raises(DiracError, match=rf"^{odd} is not a diraccodec diffusion weights file \({message}"):
            load_diffusion_weights(odd)


def test_settings_carried_to_another_ladder_keep_each_lambdas_settings():
    from diraccodec.codec.hyperprior import DEFAULT_LAMBDAS, ladder_position
    from diraccodec.diffusion.finishing import settings_on_ladder

    sampler = SamplerSettings(grid_power=(0.4, 1.0), bound_low_level=0.5, bound_high_level=0.1)
    finishing = FinishingSettings(residual_gain=(1.2, 1.0), kept_noise=(0.3, 0.45, 0.45, 0.3),
                                  detail_gain=(2.6, 2.2, 1.8, 1.3, 0.7), detail_match=(0.7, 0.7, 0.0))
    same = settings_on_ladder(sampler, finishing, DEFAULT_LAMBDAS, DEFAULT_LAMBDAS)
    for level in (1, 1.5, 2, 2.5, 3, 4.25, 7, 8):
        assert same[1].at(level) == pytest.approx(finishing.at(level))
        assert same[0].bound(level, 8) == pytest.approx(sampler.bound(level, 8))
        assert per_level(same[0].grid_power, level) == pytest.approx(per_level(sampler.grid_power, level))
    # one level lower: each new level k has the old level k-1's settings; the new level 1 lies
    # below the old ladder and holds the old level 1's
    lower = (DEFAULT_LAMBDAS[0] / 3, *DEFAULT_LAMBDAS[:-1])
    carried_sampler, carried = settings_on_ladder(sampler, finishing, DEFAULT_LAMBDAS, lower)
    for level in range(2, 9):
        assert carried.at(level) == pytest.approx(finishing.at(level - 1))
    assert carried.at(1) == pytest.approx(finishing.at(1))
    assert carried_sampler.bound(1, 8) == 0.5 and carried_sampler.bound(8, 8) == pytest.approx(sampler.bound(7, 8))
    # a lambda halfway (in log) between two old levels: their settings' mean, except the detail
    # map's share, held from its level up to the next
    halfway = (DEFAULT_LAMBDAS[1] * DEFAULT_LAMBDAS[2]) ** 0.5
    assert ladder_position(DEFAULT_LAMBDAS, halfway) == pytest.approx(2.5)
    _, between = settings_on_ladder(sampler, finishing, DEFAULT_LAMBDAS, (halfway, *DEFAULT_LAMBDAS[1:]))
    assert between.at(1).detail_gain == pytest.approx(2.0) and between.at(1).detail_match == 0.7


def test_ladder_positions_interpolate_in_log_lambda_and_extend_beyond_the_ends():
    from diraccodec.codec.hyperprior import ladder_position

    ladder = (0.001, 0.01, 0.1)
    assert [ladder_position(ladder, value) for value in ladder] == [1.0, 2.0, 3.0]
    assert ladder_position(ladder, 0.001 * 10**0.25) == pytest.approx(1.25)
    assert ladder_position(ladder, 0.0001) == pytest.approx(0.0)
    assert ladder_position(ladder, 10.0) == pytest.approx(5.0)


def test_the_detail_map_rule_keeps_its_lambda_on_another_ladder():
    from diraccodec.api import DETAIL_MAP_BELOW_LAMBDA, detail_map_below
    from diraccodec.codec.hyperprior import DEFAULT_LAMBDAS

    assert detail_map_below(DEFAULT_LAMBDAS) == 3.0  # the shipped ladder: levels 1 and 2 carry the map
    lower = (0.0001, 0.000268, 0.00072, 0.00193, 0.00518, 0.0139, 0.0373, 0.1)
    assert lower[3] < DETAIL_MAP_BELOW_LAMBDA < lower[4] and 4 < detail_map_below(lower) < 5
    assert detail_map_below((0.01, 0.1)) == 1.0 and detail_map_below((0.0001, 0.0002)) == 2.0


@pytest.mark.parametrize("cells", [0.0, -2.0])
def test_settings_measuring_the_lattice_over_no_cells_are_refused(cells):
    """The lattice is measured over lattice_cells periods: none or fewer cannot measure it, so a
    weights file that says so is refused rather than finishing with a nonsense lattice."""
    with pytest.raises(ValueError, match=rf"lattice_cells positive, not 8 and {cells}"):
        FinishingSettings(lattice_period=8, lattice_cells=cells)
    assert FinishingSettings(lattice_period=8, lattice_cells=0.5).lattice_cells == 0.5


def test_levels_above_the_old_ladder_take_its_top_level_s_settings():
    """Beyond the old ladder's top the new levels hold the top level's settings, even where
    the settings list more levels than that ladder has: hand-set values are not extrapolated."""
    from diraccodec.diffusion.finishing import settings_on_ladder

    chosen_for, ladder = (0.001, 0.01, 0.1), (0.01, 0.1, 1.0)  # the new top lies 2 levels above
    finishing = FinishingSettings(residual_gain=(1.0, 1.1, 1.2, 1.3, 1.4), kept_noise=(0.0, 0.1, 0.2, 0.3, 0.4),
                                  detail_match=(0.0, 0.5, 0.6, 0.7, 0.8))
    _, carried = settings_on_ladder(SamplerSettings(grid_power=(1.0, 0.9, 0.8, 0.7, 0.6)), finishing, chosen_for,
                                    ladder)
    assert carried.residual_gain == pytest.approx((1.1, 1.2, 1.2))
    assert carried.kept_noise == pytest.approx((0.1, 0.2, 0.2))
    assert carried.detail_match == (0.5, 0.6, 0.6)
