"""The detail map: measured by the encoder, coded exactly, and steering the decoder's detail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import diraccodec
from diraccodec.container import drc
from diraccodec.diffusion import detail_map
from diraccodec.diffusion.finishing import FinishingSettings
from diraccodec.entropy.map_coder import decode_map, encode_map
from diraccodec.errors import CorruptFileError
from diraccodec.modelfiles import load_diffusion_weights, replace_diffusion_settings


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (16, 24)])
def test_maps_round_trip_exactly_and_smooth_maps_cost_few_bits(shape):
    rng = np.random.default_rng(5)
    rough = rng.integers(-24, 1, size=shape)
    rough.flat[0], rough.flat[-1] = -24, 0  # both ends of the range
    assert np.array_equal(decode_map(encode_map(rough, -24, 0), shape, -24, 0), rough)
    smooth = np.clip(-12 + np.add.outer(np.arange(shape[0]), np.arange(shape[1])) // 8, -24, 0)
    payload = encode_map(smooth, -24, 0)
    assert np.array_equal(decode_map(payload, shape, -24, 0), smooth)
    assert len(payload) * 8 <= 32 + 1.2 * smooth.size  # mostly repeated neighbours: about a bit each
    with pytest.raises(ValueError):
        encode_map(rough + 1, -24, 0)


def test_a_corrupt_map_payload_is_a_clear_error():
    for short in (b"", b"\x20"):
        with pytest.raises(CorruptFileError):
            detail_map.from_payload(short, 64, 64)
    with pytest.raises(CorruptFileError, match="whole 32-bit words"):
        detail_map.from_payload(b"\x20\x02abc", 64, 64)  # not whole words
    whole = detail_map.to_payload(detail_map.DetailMap(8, np.zeros((8, 8), np.int64)))
    assert detail_map.from_payload(whole, 64, 64).block == 8
    # the same span, shifted: the symbols read alike, and the first value lands outside the range
    with pytest.raises(CorruptFileError, match=r"\(detail map value out of range\)"):
        decode_map(encode_map(np.array([[-24, 0]]), -24, 0), (1, 2), -12, 12)
    for block in (0, 1, 7):  # blocks under 8 pixels: a map as large as the image, which no encoder sends
        with pytest.raises(CorruptFileError, match=r"\(detail map header\)"):
            detail_map.from_payload(bytes([block]) + whole[1:], 64, 64)


def test_coded_values_no_symbols_could_give_are_a_corrupt_file(small_image):
    """constriction says so by an AssertionError, which must not reach the caller."""
    parsed = drc.unpack(diraccodec.encode(small_image, 1, effort=1))
    parsed.sections[drc.TAG_DETAIL] = parsed.sections[drc.TAG_DETAIL][:2] + b"\xff" * 64
    with pytest.raises(CorruptFileError, match=r"^corrupt \.drc file \(detail map: invalid coded data\)$"):
        diraccodec.decode(drc.pack(parsed), 2)
    parsed.sections[drc.TAG_DETAIL] = b""  # shorter than its 2-byte header: not taken for no map
    with pytest.raises(CorruptFileError, match=r"^corrupt \.drc file \(detail map"):
        diraccodec.decode(drc.pack(parsed), 2)


def test_the_map_measures_the_missing_fine_detail_block_by_block_in_bands(sample_image):
    original = np.asarray(sample_image.crop((0, 0, 200, 300)))  # more rows than one band holds
    base = np.asarray(sample_image.crop((0, 0, 200, 300)).resize((50, 75)).resize((200, 300)))
    measured = detail_map.measure(original, base)
    assert measured.codes.shape == detail_map.map_shape(200, 300, detail_map.BLOCK) == (10, 7)
    # the bands agree with the whole image measured at once
    whole = torch.from_numpy((original.astype(np.float32) - base.astype(np.float32)) / 255).permute(2, 0, 1)[None]
    rms = detail_map.block_energy(detail_map.fine_detail(whole), detail_map.BLOCK)[0, 0].sqrt().numpy()
    expected = np.clip(np.round(2 * np.log2(np.maximum(rms, 2.0**-13))), -24, 0)
    assert np.array_equal(measured.codes, expected)
    assert len(np.unique(measured.codes)) > 3  # a photo's detail varies across it
    # nothing missing: as little as the map can say
    assert (detail_map.measure(original, original).codes == detail_map.LOWEST_CODE).all()
    sent = detail_map.from_payload(detail_map.to_payload(measured), 200, 300)
    assert sent.block == measured.block and np.array_equal(sent.codes, measured.codes)


def test_matching_scales_each_blocks_fine_detail_to_its_share_of_the_map():
    torch.manual_seed(0)
    residual = 0.02 * torch.randn(1, 3, 64, 96)
    codes = np.full((2, 3), -10)  # RMS 2^-5 everywhere
    matched = detail_map.match_detail(residual, detail_map.DetailMap(32, codes), 0.5, (0.1, 10.0))
    detail = detail_map.fine_detail(residual)
    smooth = residual - detail
    # only the fine detail changes, by one scale where the map and the detail are even
    scale = (matched - smooth) / detail
    assert torch.allclose(scale, scale.mean(), rtol=0.05)
    energy = detail_map.block_energy(matched - smooth, 32).sqrt()
    assert torch.allclose(energy, torch.full_like(energy, 0.5 * 2**-5), rtol=0.05)
    # the bounds hold the scale; a share of the matching raises it to that power
    assert 0.85 < scale.mean() < 0.95  # the detail's RMS is about 0.017
    bounded = detail_map.match_detail(residual, detail_map.DetailMap(32, codes), 0.5, (0.5, 0.8))
    assert torch.allclose(bounded - smooth, 0.8 * detail, atol=1e-6)
    half = detail_map.match_detail(residual, detail_map.DetailMap(32, codes), 0.5, (0.5, 0.8), share=0.5)
    assert torch.allclose(half - smooth, 0.8**0.5 * detail, atol=1e-6)
    with pytest.raises(CorruptFileError, match="does not fit"):
        detail_map.match_detail(residual, detail_map.DetailMap(32, np.zeros((3, 3), dtype=int)), 0.5, (0.5, 2))


def test_detail_match_holds_each_levels_value_and_is_checked():
    settings = FinishingSettings(detail_match=(0.7, 0.8, 0.0))
    assert [settings.at(level).detail_match for level in (1, 1.9, 2, 2.5, 3, 8)] == [0.7, 0.7, 0.8, 0.8, 0, 0]
    assert FinishingSettings().at(1).detail_match == 0  # the plain finishing never uses it
    with pytest.raises(ValueError, match="detail_match"):
        FinishingSettings(detail_match=(-0.1,))
    with pytest.raises(ValueError, match="detail_match"):
        FinishingSettings(detail_match_bounds=(1.2, 2.0))


def test_the_encoder_sends_a_map_below_level_3_or_when_asked_and_decoding_follows_it(
    small_image, random_diffusion_weights, tmp_path, monkeypatch
):
    from diraccodec import api

    weights = tmp_path / "diffusion.safetensors"
    loaded = load_diffusion_weights(random_diffusion_weights)
    replace_diffusion_settings(random_diffusion_weights, weights,
                               finishing=dataclasses.replace(loaded.finishing, detail_match=(0.0, 0.7, 0.0)))
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(weights))
    api.models._cached_diffusion.cache_clear()
    try:
        with_map = diraccodec.encode(small_image, 2)
        without = diraccodec.encode(small_image, 3)
        forced_off = diraccodec.encode(small_image, 2, detail_map=False)
        assert drc.TAG_DETAIL in drc.unpack(with_map).sections
        assert drc.TAG_DETAIL not in drc.unpack(without).sections
        assert drc.TAG_DETAIL not in drc.unpack(forced_off).sections
        assert 0 < len(with_map) - len(forced_off) < 40  # 3x3 blocks: a few bytes
        asked = diraccodec.encode(small_image, 3, detail_map=True)
        assert drc.TAG_DETAIL in drc.unpack(asked).sections
        # the map changes the steered image only, not the base at 0 steps
        decoded = [np.asarray(diraccodec.decode(data, steps=steps), dtype=np.int16)
                   for data in (with_map, forced_off) for steps in (0, 3)]
        assert np.array_equal(decoded[0], decoded[2])
        assert np.abs(decoded[1] - decoded[3]).mean() > 0.2
        from click.testing import CliRunner

        from diraccodec.cli import main

        small_image.save(tmp_path / "small.png")
        result = CliRunner().invoke(main, ["encode", str(tmp_path / "small.png"), "-q", "2",
                                           "--no-detail-map", "-o", str(tmp_path / "small.drc")])
        assert result.exit_code == 0 and (tmp_path / "small.drc").read_bytes() == forced_off
        # the evaluation decodes as the API does
        from diraccodec.evaluation.codecs import diraccodec_codec

        data, decodings = diraccodec_codec([2], steps=(3,)).round_trip(small_image, 2)
        assert data == with_map and np.array_equal(np.asarray(decodings[0].image, dtype=np.int16), decoded[1])
        # decoders that do not use it at this level ignore it
        plain = diraccodec.decode(with_map, steps=3, diffusion_weights=random_diffusion_weights)
        assert np.array_equal(np.asarray(plain),
                              np.asarray(diraccodec.decode(forced_off, steps=3,
                                                           diffusion_weights=random_diffusion_weights)))
    finally:
        api.models._cached_diffusion.cache_clear()


def test_the_map_does_not_depend_on_which_diffusion_weights_are_installed(small_image, monkeypatch, tmp_path):
    from diraccodec import api

    with_weights = diraccodec.encode(small_image, 1)
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(tmp_path / "absent.safetensors"))
    api.models._cached_diffusion.cache_clear()
    try:
        assert diraccodec.encode(small_image, 1) == with_weights
        assert drc.TAG_DETAIL in drc.unpack(with_weights).sections
    finally:
        api.models._cached_diffusion.cache_clear()


def test_the_encoder_writes_the_map_below_the_same_lambda_on_another_ladder(small_image, tmp_path):
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.modelfiles import export_base_weights

    torch.manual_seed(0)
    weights = tmp_path / "base.safetensors"
    ladder = (0.0001, 0.000268, 0.00072, 0.00193, 0.00518, 0.0139, 0.0373, 0.1)  # the map below level 4.16
    export_base_weights(MultiRateHyperprior(HyperpriorConfig(8, 12, ladder)), weights, {})
    for quality, has_map in ((4.0, True), (4.5, False)):
        data = diraccodec.encode(small_image, quality, effort=1, weights=weights)
        assert (drc.TAG_DETAIL in drc.unpack(data).sections) == has_map, quality
