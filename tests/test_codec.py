"""The codec on real images: sizes, colour modes, exact latents, determinism, rate order."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diraccodec
from diraccodec.api import compute_for, get_codec
from diraccodec.compute import Compute, mkl_is_strict
from diraccodec.container import drc
from diraccodec.entropy.latent_stream import Arithmetic, Latents
from diraccodec.errors import CorruptFileError, InvalidOptionError
from diraccodec.transforms.search import SearchSettings
from tests.conftest import DATA, ROOT, captured_search, psnr, saved_as, srgb_profile, swapped_primaries_profile

# A 192x128 crop of the sample at level 3, written by the encoder of format version 1 (entropy
# parameters in float64 on the CPU), and the SHA-256 of its latent symbols (int64, little-endian).
VERSION_1_FILE = DATA / "parrots-v1.drc"
VERSION_1_CROP = (120, 40, 312, 168)
VERSION_1_SYMBOLS = "3a1e9fced01561dec01ed331fb0e7fd030713d069fe92ec7ab02e038bda15bbe"
# A 180x110 crop at level 3 by the encoder of format version 2 (fixed point, and the padding's
# latents coded: the crop is padded to 192x128), and the SHA-256 of its symbols.
VERSION_2_FILE = DATA / "parrots-v2.drc"
VERSION_2_CROP = (120, 40, 300, 150)
VERSION_2_SYMBOLS = "566a4b6a6826ae450e2b15677442808523dff7198a97f36b6aa8b2901d796396"
# 96x64 crops (120, 40, 216, 104) by the encoders of format versions 3 and 4 at levels 2 (with a
# detail map), 8 (the top row of the level tables) and -1: the SHA-256 of their latent symbols
# and of their detail map's codes (int64, little-endian).
CURRENT_VERSION_FILES = {
    "parrots-v3-level2.drc": ("42244db87f10d1c58bb2e04b3e456b665efcd35d8459722947bb5e8420414aaa",
                              "11aadfb4d0bf7ea39d3083249d635e11fb447dfe4e0e6ba938563b6c4d806ffb"),
    "parrots-v3-level8.drc": ("304c3a7c97d10e7ce20496ea31e5ca6c1d696cc84c20bb5cd3e90c311ef78447", None),
    "parrots-v4-level-1.drc": ("b5f8b5d9fc3a8913a21e081bd4d66a5661217b2ee95611fc5ce959bfea062ff4",
                               "0935302c3fed627eb549f329f86e0f9919768e9e8911ee864f710ad3c1246fa6"),
}


def test_round_trip_keeps_size_and_resembles_the_input(small_image):
    data = diraccodec.encode(small_image, 6)
    decoded = diraccodec.decode(data)
    assert decoded.size == small_image.size and decoded.mode == "RGB"
    assert psnr(small_image, decoded) > 29  # 32.0 dB; 8x8 flat blocks would give 20.5


def read_earlier_version(path: Path, arithmetic: Arithmetic) -> tuple[bytes, drc.DrcFile, Latents, str]:
    """A file of an earlier format version, its header, its latents read as that version codes
    them (the padding's latents too), and the SHA-256 of their symbols (int64, little-endian)."""
    data = path.read_bytes()
    header = drc.unpack(data)
    reader = get_codec(None, compute_for("cpu")).for_file(header.weights_id)  # the earlier release's tables
    assert reader is not None
    latents = reader.read_stream(header.sections[drc.TAG_LATENTS], header.width, header.height, header.quality,
                                 arithmetic, whole_grid=True)
    return data, header, latents, hashlib.sha256(latents.symbols.astype("<i8").tobytes()).hexdigest()


def test_a_format_version_1_file_still_decodes_with_its_float64_parameters(sample_image):
    data, header, latents, digest = read_earlier_version(VERSION_1_FILE, Arithmetic.FLOAT64_CPU)
    assert header.version == 1 and digest == VERSION_1_SYMBOLS
    crop = sample_image.crop(VERSION_1_CROP)
    decoded = diraccodec.decode(data, steps=0)
    assert decoded.size == crop.size and psnr(crop, decoded) > 29
    # the version decides: the current arithmetic's tables read the stream otherwise
    _, _, misread, _ = read_earlier_version(VERSION_1_FILE, Arithmetic.FIXED_POINT)
    assert not np.array_equal(misread.symbols, latents.symbols)
    rewritten = diraccodec.encode(crop, 3)
    assert drc.unpack(rewritten).version == drc.FORMAT_VERSION == 3
    assert abs(len(rewritten) - len(data)) <= 0.02 * len(data)  # a crop of whole 64-pixel blocks


def test_a_format_version_2_file_still_decodes_with_its_padding_coded(sample_image):
    data, header, latents, digest = read_earlier_version(VERSION_2_FILE, Arithmetic.FIXED_POINT)
    assert header.version == 2 and digest == VERSION_2_SYMBOLS and latents.symbols.shape[1:] == (8, 12)
    assert latents.symbols[:, 7:, :].any()  # the padding's row (110 pixels cover 7 of the 8) was coded
    crop = sample_image.crop(VERSION_2_CROP)
    decoded = diraccodec.decode(data, steps=0)
    assert decoded.size == crop.size and psnr(crop, decoded) > 28
    rewritten = diraccodec.encode(crop, 3)
    assert drc.unpack(rewritten).version == 3 and len(rewritten) < len(data)


@pytest.mark.cuda(required=False)
@pytest.mark.parametrize("name", list(CURRENT_VERSION_FILES))
def test_files_of_the_current_format_versions_read_as_they_were_written(sample_image, name):
    """Stored files, not a round trip: a change to the tables, the escapes or the map's coding
    that encoder and decoder share would pass a round trip and misread every earlier file."""
    from diraccodec.diffusion import detail_map

    data = (DATA / name).read_bytes()
    header = drc.unpack(data)
    assert f"-v{header.version}-level{header.quality:g}." in name
    latents = get_codec(None, compute_for("cpu")).read_stream(header.sections[drc.TAG_LATENTS], header.width,
                                                               header.height, header.quality)
    symbols, map_codes = CURRENT_VERSION_FILES[name]
    assert hashlib.sha256(latents.symbols.astype("<i8").tobytes()).hexdigest() == symbols
    if map_codes is not None:
        codes = detail_map.from_payload(header.sections[drc.TAG_DETAIL], header.width, header.height).codes
        assert hashlib.sha256(codes.astype("<i8").tobytes()).hexdigest() == map_codes
    else:
        assert drc.TAG_DETAIL not in header.sections
    # the reference decoder's pixels (the exact mode at 0 steps, saved as name.png when the file
    # was made): this decoder's, in either mode, are within the format's tolerance of them
    reference = np.asarray(Image.open(DATA / name.replace(".drc", ".png")), dtype=np.int16)
    for device in devices():
        for exact in (False, True):
            decoded = np.asarray(diraccodec.decode(data, steps=0, device=device, exact=exact), dtype=np.int16)
            assert np.abs(decoded - reference).max() <= 2 and np.mean(decoded != reference) < 0.01, (device, exact)
    crop = np.asarray(sample_image.crop((120, 40, 216, 104)), dtype=np.int16)
    assert np.abs(reference - crop).mean() < 12  # made from the crop it names


@pytest.mark.cuda(required=False)
@pytest.mark.parametrize("name", list(CURRENT_VERSION_FILES))
def test_decodes_with_steps_stay_within_the_format_s_tolerance_of_the_reference_decoder(name):
    """The reference decoder's 20-step pixels (the exact mode on a CPU, saved as
    name-steps20.png): a change to the sampler, its noise or schedule, the U-Net or the finishing
    would pass every round trip. Another seed, or 5 steps, is over the format's tolerance; a
    smaller change (the implied noise's scale off by 5%) is caught by the exact mode on a CPU,
    which only rounds a value the other way where another CPU kind sums in another order."""
    data = (DATA / name).read_bytes()
    reference = np.asarray(Image.open(DATA / name.replace(".drc", "-steps20.png")), dtype=np.int16)
    for device in devices():
        for exact in (False, True):
            decoded = np.asarray(diraccodec.decode(data, steps=20, device=device, exact=exact), dtype=np.int16)
            difference = np.abs(decoded - reference)
            assert difference.max() <= 8 and difference.mean() <= 0.5, (device, exact, difference.mean())
            if exact and device == "cpu":
                assert difference.max() <= 2 and np.mean(difference > 0) < 0.02, np.mean(difference > 0)


def test_a_latent_stream_of_part_of_a_word_is_corrupt():
    from dataclasses import replace

    header = drc.unpack((DATA / "parrots-v3-level8.drc").read_bytes())
    cut = drc.pack(replace(header, sections={**header.sections,
                                             drc.TAG_LATENTS: header.sections[drc.TAG_LATENTS] + b"\x00"}))
    with pytest.raises(CorruptFileError, match=r"latent stream length is not a whole number of words"):
        diraccodec.decode(cut, steps=0)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (13, 1), (37, 53), (65, 129)])
def test_any_size_decodes_to_that_size(sample_image, size):
    image = sample_image.resize(size)
    decoded = diraccodec.decode(diraccodec.encode(image, 4))
    assert decoded.size == size
    if size[0] * size[1] > 100:
        assert psnr(image, decoded) > 23  # 25.7 and 28.1 dB; 8x8 flat blocks would give 17-18


@pytest.mark.slow
def test_large_image_goes_through_tiles_without_seams(sample_image):
    image = sample_image.resize((1100, 700), Image.BICUBIC)
    data = diraccodec.encode(image, 5)
    decoded = diraccodec.decode(data)
    assert decoded.size == (1100, 700)
    # The analysis' tiles are 512 px, the synthesis' and the U-Nets' 1024: a seam would show as a
    # jump in the error across x = 512 or 1024, or y = 512, that the rest of the image lacks.
    error = np.abs(np.asarray(decoded, dtype=np.float64) - np.asarray(image, dtype=np.float64)).mean(axis=2)
    by_column, by_row = error.mean(axis=0), error.mean(axis=1)
    for profile, edge in ((by_column, 512), (by_column, 1024), (by_row, 512)):
        assert profile[edge - 4:edge + 4].max() < 3 * np.median(profile) + 2, edge
    assert psnr(image, decoded) > 20


def test_tiles_of_the_analysis_and_the_synthesis_give_what_one_pass_over_the_image_does(sample_image, monkeypatch):
    """Each tile carries a margin of the neighbours' pixels (latents) wider than the transform
    reaches, so that stitched tiles are the whole image's transform: no seams. Here tiles of 64
    pixels (4 latents) cut a 256x192 crop that one pass takes whole at the shipped tile sizes."""
    from diraccodec.codec import base_codec

    codec = get_codec()
    rgb = np.asarray(sample_image.crop((100, 40, 356, 232)))
    latents = codec.analyse(rgb, 3)
    whole_analysis, whole_synthesis = codec.analysis_latents(rgb), codec.synthesize(latents, 256, 192, 3)
    monkeypatch.setattr(base_codec, "TILE_LATENTS", 4)
    monkeypatch.setattr(base_codec, "SYNTHESIS_TILE_LATENTS", 4)
    torch.testing.assert_close(codec.analysis_latents(rgb), whole_analysis, rtol=0, atol=1e-3)
    tiled = codec.synthesize(latents, 256, 192, 3).astype(np.int16)
    assert np.abs(tiled - whole_synthesis).max() <= 1  # a float rounding across an 8-bit level at most


def test_the_search_weighs_squared_error_as_the_training_objective_does(small_image, monkeypatch):
    """The objective is lambda * 255^2 * MSE + bits, the MSE a mean over every channel of every
    pixel: the search's weight of the squared error summed over RGB is lambda * 255^2 / 3 bits.
    Checked against the MSE of the decoder's own 8-bit pixels."""
    from diraccodec.transforms import search

    codec, rgb, level = get_codec(), np.asarray(small_image), 3
    problem, symbols = captured_search(codec, rgb, level, monkeypatch)
    rows, columns = symbols.shape[1:]
    tile = search._TileSearch(problem, symbols, (slice(0, rows), slice(0, columns)), (rows, columns))
    with torch.no_grad():
        weighed = problem.distortion_weight * tile.cell_errors(torch.from_numpy(symbols).float()).sum().item()
    height, width = rgb.shape[:2]
    decoded = codec.synthesize(codec.analyse(rgb, level), width, height, level).astype(np.float64)
    mse = np.mean((decoded / 255 - rgb / 255) ** 2)
    assert weighed == pytest.approx(codec._lambda(level) * 255**2 * mse * height * width, rel=0.02)


def test_latent_symbols_round_trip_exactly(small_image):
    """Decoded hyper-latents and latents equal what the encoder coded, escapes included."""
    codec = get_codec()
    latents = codec.analyse(np.asarray(small_image), 3)
    decoded = codec.read_stream(codec.write_stream(latents, 3), small_image.width, small_image.height, 3)
    np.testing.assert_array_equal(decoded.hyper, latents.hyper)
    np.testing.assert_array_equal(decoded.symbols, latents.symbols)
    # Values far outside every table must escape and still come back exactly.
    latents.symbols[0, 0, :3] = [100_000, -(2**35), 7_777]
    latents.hyper[0, 0, 0] = -5_000
    latents = Latents(latents.hyper, latents.symbols, *codec.stream.parameters(latents.hyper)[:2], latents.cells)
    decoded = codec.read_stream(codec.write_stream(latents, 3), small_image.width, small_image.height, 3)
    np.testing.assert_array_equal(decoded.hyper, latents.hyper)
    np.testing.assert_array_equal(decoded.symbols, latents.symbols)
    # ... and the escapes really cost extra bits, so the path was taken.
    assert len(codec.write_stream(latents, 3)) > len(codec.compress(np.asarray(small_image), 3))


def test_greyscale_decodes_to_greyscale(small_image):
    grey = small_image.convert("L")
    decoded = diraccodec.decode(diraccodec.encode(grey, 5))
    assert decoded.mode == "L" and decoded.size == grey.size
    assert psnr(grey, decoded) > 29  # 32.7 dB


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_exactly(small_image, mode):
    image = small_image.convert(mode)
    alpha = np.tile(np.linspace(0, 255, image.width, dtype=np.uint8), (image.height, 1))
    image.putalpha(Image.fromarray(alpha))
    decoded = diraccodec.decode(diraccodec.encode(image, 5))
    assert decoded.mode == mode
    np.testing.assert_array_equal(np.asarray(decoded.getchannel("A")), alpha)


def test_the_stream_codes_the_image_cells_and_the_padding_latents_are_zero(small_image):
    """96x80 pixels are 6x5 latent cells, padded to 8x8: the stream carries the 30 cells only."""
    codec = get_codec(None, compute_for("cpu"))
    rgb = np.asarray(small_image)
    latents = codec.analyse(rgb, 4.0, SearchSettings(passes=1))
    assert latents.cells == (5, 6) and latents.symbols.shape[1:] == (8, 8)
    assert not latents.symbols[:, 5:, :].any() and not latents.symbols[:, :, 6:].any()
    assert latents.symbols[:, :5, :6].any()
    stream = codec.write_stream(latents, 4)
    read = codec.read_stream(stream, small_image.width, small_image.height, 4)
    assert read.cells == (5, 6) and np.array_equal(read.symbols, latents.symbols)
    whole = codec.write_stream(dataclasses.replace(latents, cells=None), 4)  # the same symbols, the padding coded too
    assert len(stream) < len(whole)
    assert np.array_equal(codec.read_stream(whole, small_image.width, small_image.height, 4, whole_grid=True).symbols,
                          latents.symbols)
    # without the image, nothing is known of its padding: every latent is rounded and coded
    assert codec.quantize(codec.analysis_latents(rgb), 4.0).cells is None


def test_an_icc_profile_is_carried_compressed_and_an_srgb_one_is_left_out(small_image):
    wide = diraccodec.encode(saved_as(small_image, icc_profile=swapped_primaries_profile()), 3)
    sections = drc.unpack(wide).sections
    assert set(sections) == {drc.TAG_LATENTS, drc.TAG_ICC_COMPRESSED}
    assert len(sections[drc.TAG_ICC_COMPRESSED]) < len(swapped_primaries_profile())
    assert diraccodec.decode(wide).info.get("icc_profile") == swapped_primaries_profile()
    # the same pixels without a profile are what every viewer shows as sRGB: nothing to keep
    srgb = diraccodec.encode(saved_as(small_image, icc_profile=srgb_profile()), 3)
    assert srgb == diraccodec.encode(small_image, 3) and "icc_profile" not in diraccodec.decode(srgb).info


def test_a_profile_of_another_colour_space_than_the_decoded_pixels_is_left_out(small_image):
    """A Lab profile does not describe converted RGB pixels, nor an RGB one grey pixels."""
    grey_profile = bytearray(swapped_primaries_profile())
    grey_profile[16:20] = b"GRAY"  # the colour space an ICC header names
    lab = small_image.convert("LAB")
    assert lab.info["icc_profile"][16:20] == b"Lab "  # Pillow gives its Lab pixels a Lab profile
    grey = small_image.convert("L")
    cases = [(lab, None), (saved_as(grey, icc_profile=bytes(grey_profile)), bytes(grey_profile)),
             (saved_as(grey, icc_profile=swapped_primaries_profile()), None)]
    cmyk = small_image.convert("CMYK")
    cmyk.info["icc_profile"] = b"not a profile" * 40  # unreadable, but a CMYK one whatever it says
    cases.append((cmyk, None))
    for image, profile in cases:
        assert diraccodec.decode(diraccodec.encode(image, 3, effort=1)).info.get("icc_profile") == profile


def test_a_profile_stored_as_it_is_still_decodes_and_a_corrupt_one_fails_in_one_line(small_image):
    wide = drc.unpack(diraccodec.encode(saved_as(small_image, icc_profile=swapped_primaries_profile()), 3))
    del wide.sections[drc.TAG_ICC_COMPRESSED]
    verbatim = dataclasses.replace(wide, sections={**wide.sections, drc.TAG_ICC: srgb_profile()})
    assert diraccodec.decode(drc.pack(verbatim)).info.get("icc_profile") == srgb_profile()  # version 1 files
    for payload in (b"not zlib", zlib.compress(swapped_primaries_profile())[:-3], zlib.compress(b"")):
        broken = dataclasses.replace(wide, sections={**wide.sections, drc.TAG_ICC_COMPRESSED: payload})
        with pytest.raises(CorruptFileError, match="ICC profile"):
            diraccodec.decode(drc.pack(broken))


def test_exif_orientation_is_applied_on_encode(small_image):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = diraccodec.decode(diraccodec.encode(saved_as(small_image, "JPEG", quality=95, exif=exif), 6))
    assert decoded.size == (small_image.height, small_image.width)
    upright = small_image.transpose(Image.Transpose.ROTATE_270)
    assert psnr(upright, decoded) > 29  # 32.1 dB


def test_rate_and_quality_rise_with_the_level(small_image):
    sizes, scores = [], []
    for quality in (1, 3, 5, 8):
        data = diraccodec.encode(small_image, quality)
        sizes.append(len(data))
        scores.append(psnr(small_image, diraccodec.decode(data)))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert scores == sorted(scores)


def test_fractional_level_lies_between_its_neighbours(small_image):
    low, mid, high = (len(diraccodec.encode(small_image, q)) for q in (3, 3.5, 4))
    assert low < mid < high
    assert diraccodec.inspect(diraccodec.encode(small_image, 3.5)).header.quality == 3.5


def test_levels_below_1_go_on_along_the_line_of_levels_1_and_2(small_image):
    sizes = [len(diraccodec.encode(small_image, q, effort=1)) for q in (-1, -0.5, 0, 0.5, 1)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    scores = []
    for level in (-1, 0, 1):
        data = diraccodec.encode(small_image, level)
        header = diraccodec.inspect(data).header
        assert header.quality == level and header.version == (4 if level < 0 else 3)
        scores.append(psnr(small_image, diraccodec.decode(data)))
    assert 19 < scores[0] < scores[1] < scores[2]
    codec = get_codec()
    log_gains = [codec._gains64(q)[0].log() for q in (-1, 0, 1, 2)]
    assert torch.allclose(log_gains[1], 2 * log_gains[2] - log_gains[3])
    assert torch.allclose(log_gains[0], 3 * log_gains[2] - 2 * log_gains[3])
    assert codec._lambda(0) == pytest.approx(codec._lambda(1) ** 2 / codec._lambda(2))


def test_a_level_outside_the_models_range_in_a_file_is_corrupt(small_image):
    data = diraccodec.encode(small_image, -1, effort=1)
    header = drc.unpack(data)
    for level in (-1.5, 8.5):
        forged = drc.pack(dataclasses.replace(header, quality=level, version=None))
        with pytest.raises(CorruptFileError, match="outside the model's -1 to 8"):
            diraccodec.decode(forged)


@pytest.mark.parametrize("quality", [-1.01, -2, 8.01, 100, float("nan")])
def test_quality_out_of_range_is_refused(small_image, quality):
    with pytest.raises(InvalidOptionError, match=r"^quality must be between -1 and 8, got "):
        diraccodec.encode(small_image, quality)


def test_diffusion_steps_are_validated_and_0_needs_no_diffusion_model(small_image, monkeypatch, tmp_path):
    """Steps without the diffusion model: test_diffusion_decoder."""
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(tmp_path / "absent.safetensors"))  # no diffusion model
    data = diraccodec.encode(small_image, 2)
    assert diraccodec.decode(data, steps=0).size == small_image.size
    for steps in (-1, 101):
        with pytest.raises(InvalidOptionError, match=rf"^steps must be between 0 and 100, got {steps}$"):
            diraccodec.decode(data, steps=steps)


DECODE_IN_NEW_PROCESS = """
import sys, hashlib, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
import diraccodec
image = diraccodec.decode(open(sys.argv[2], "rb").read(), exact=True, device="cpu")
print(hashlib.sha256(np.asarray(image).tobytes()).hexdigest())
"""


def _decode_in_new_process(path: Path, threads: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DECODE_IN_NEW_PROCESS, str(threads), str(path)],
                          check=True, capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_exact_mode_gives_the_same_pixels_with_one_or_two_threads_in_new_processes(sample_image, tmp_path):
    path = tmp_path / "parrots.drc"
    data = diraccodec.encode(sample_image, 3)
    path.write_bytes(data)
    exact = np.asarray(diraccodec.decode(data, exact=True, device="cpu"))
    here = __import__("hashlib").sha256(exact.tobytes()).hexdigest()
    assert mkl_is_strict() in (True, None)  # importing diraccodec asked for MKL's strict mode
    digests = {_decode_in_new_process(path, threads).stdout.strip() for threads in (1, 2)}
    assert digests == {here}


@pytest.mark.slow
def test_without_strict_mkl_exact_decoding_warns_and_stays_thread_invariant(sample_image, tmp_path):
    if mkl_is_strict() is None:
        pytest.skip("torch does not use MKL here")
    path = tmp_path / "parrots.drc"
    path.write_bytes(diraccodec.encode(sample_image, 3))
    loose = {**os.environ, "MKL_CBWR": "AUTO"}  # MKL free to split its sums by thread count
    runs = [_decode_in_new_process(path, threads, loose) for threads in (1, 2)]
    assert all("not in strict reproducible mode" in run.stderr for run in runs)
    assert runs[0].stdout.strip() == runs[1].stdout.strip()


def test_encoding_is_reproducible(small_image):
    assert diraccodec.encode(small_image, 4) == diraccodec.encode(small_image, 4)
    header = drc.unpack(diraccodec.encode(small_image, 4))
    assert header.weights_id == get_codec().weights.weights_id


@pytest.mark.slow
def test_fast_decoding_is_within_the_format_tolerance_of_the_exact_one(sample_image):
    """docs/format.md: at 0 steps a decoder's pixels are within 2 grey levels of the reference
    decoder's (the exact mode), and 99% of them equal."""
    for level in (1, 4, 8):
        data = diraccodec.encode(sample_image, level)
        fast = np.asarray(diraccodec.decode(data, device="cpu"), dtype=np.int16)
        exact = np.asarray(diraccodec.decode(data, device="cpu", exact=True), dtype=np.int16)
        assert np.abs(fast - exact).max() <= 2 and np.mean(fast != exact) < 0.01, level
        np.testing.assert_array_equal(fast, np.asarray(diraccodec.decode(data, device="cpu"), dtype=np.int16))


def devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.mark.cuda(required=False)
def test_one_process_uses_every_device_in_any_order(small_image):
    """A model moved to one device must not pull another device's copy with it: decode on each
    device, back and forth, and every decode of the same file agrees with its device's first."""
    data = diraccodec.encode(small_image, 3, device="cpu")
    first: dict[str, np.ndarray] = {}
    for device in devices() + devices()[::-1] + devices():
        decoded = np.asarray(diraccodec.decode(data, device=device), dtype=np.int16)
        first.setdefault(device, decoded)
        np.testing.assert_array_equal(decoded, first[device])
    for device, decoded in first.items():  # within the format's tolerance of the CPU
        assert np.abs(decoded - first["cpu"]).max() <= 2, device
    assert get_codec(None, diraccodec.api.compute_for("cpu")).model.analysis[0].weight.device.type == "cpu"


CALLERS_PRECISION = {  # how a program may have set TF32 before it calls the codec
    "untouched": "",
    "old flags on": "torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True",
    "old flags off": "torch.backends.cudnn.allow_tf32 = False",
    "medium": "torch.set_float32_matmul_precision('medium')",
    "newer interface": "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
}
PRECISION_CHECK = """
import torch
from diraccodec.compute import Compute, CPU
{setting}
matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
newer = hasattr(matmul, "fp32_precision")
name = "fp32_precision" if newer else "allow_tf32"
flags = ((matmul, name), (cudnn.conv if newer else cudnn, name))
def readable():
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        return None
before = [getattr(owner, name) for owner, name in flags], readable()
with Compute(torch.device("cuda")).kernels():
    assert [getattr(owner, name) for owner, name in flags] == (["ieee"] * 2 if newer else [False] * 2)
assert ([getattr(owner, name) for owner, name in flags], readable()) == before, before
with Compute(CPU).kernels():
    assert [getattr(owner, name) for owner, name in flags] == before[0]
"""


@pytest.mark.cuda(required=False)
@pytest.mark.parametrize("setting", list(CALLERS_PRECISION))
def test_a_gpu_runs_the_networks_in_full_float32_and_leaves_the_caller_s_precision_as_it_was(setting):
    """Set and put back through torch's newer per-backend interface where it has one: the older
    flags lost a caller's "medium" and left torch refusing to read its own precision, and read
    after a caller used the newer interface, they raise."""
    import torch

    if setting == "newer interface" and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch before 2.9 has no per-backend precision")
    script = PRECISION_CHECK.format(setting=CALLERS_PRECISION[setting])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


CALLERS_CPU_PRECISION = {  # where a program may ask for bfloat16 in float32's stead
    "global": lambda: torch.backends,  # every backend's
    "onednn convolutions": lambda: torch.backends.mkldnn.conv,
}


@pytest.mark.parametrize("setting", list(CALLERS_CPU_PRECISION))
def test_a_cpu_runs_the_networks_in_float32_whatever_precision_the_caller_allowed(small_image, setting, request):
    """A caller's bfloat16 for float32 work let oneDNN compute the synthesis and the analysis
    in bfloat16: the files and the 0-step pixels moved with it. A setting torch reads through
    a parent (the global one) does so again after the call, on either device: it was pinned."""
    from diraccodec.compute import cpu_computes_bfloat16

    if not hasattr(torch.backends.mkldnn, "conv"):
        pytest.skip("torch before 2.9 has no per-backend precision")
    native = cpu_computes_bfloat16()  # elsewhere oneDNN keeps float32: only the settings are checked
    # a CUDA call under a global setting leaves cuDNN's convolutions following it ("none"), where torch
    # starts them at their own "tf32" as its recurrent layers: a later test reading the older
    # flags (cudnn.allow_tf32) would find the two apart, which torch refuses
    request.addfinalizer(lambda kept=torch.backends.cudnn.conv.fp32_precision: setattr(
        torch.backends.cudnn.conv, "fp32_precision", kept))
    data = diraccodec.encode(small_image, 3, device="cpu") if native else None
    pixels = np.asarray(diraccodec.decode(data, steps=0, device="cpu")) if native else None
    owner = CALLERS_CPU_PRECISION[setting]()
    owner.fp32_precision = "bf16"
    try:
        if native:
            assert diraccodec.encode(small_image, 3, device="cpu") == data
            np.testing.assert_array_equal(np.asarray(diraccodec.decode(data, steps=0, device="cpu")), pixels)
        for device in ("cpu", "cuda"):  # the settings alone: no GPU needed
            with Compute(torch.device(device)).kernels():
                assert torch.backends.mkldnn.conv.fp32_precision == ("ieee" if device == "cpu" else "bf16")
        assert torch.backends.mkldnn.conv.fp32_precision == "bf16"  # the caller's, put back
    finally:
        owner.fp32_precision = "none"
    assert torch.backends.mkldnn.conv.fp32_precision == "none"  # following the global setting again
    if setting == "global":
        matmul = torch.backends.cuda.matmul
        torch.backends.fp32_precision = "tf32"
        try:
            with Compute(torch.device("cuda")).kernels():
                assert matmul.fp32_precision == "ieee"
            torch.backends.fp32_precision = "ieee"
            assert matmul.fp32_precision == "ieee"  # it follows the global setting, not the "tf32" it read
        finally:
            torch.backends.fp32_precision = "none"


@pytest.mark.cuda
def test_a_gpu_convolution_under_the_codec_errs_as_float32_not_tf32():
    import torch

    generator = torch.Generator().manual_seed(0)  # TF32 (10-bit mantissa) errs about 100 times more than float32
    x, weight = torch.randn(1, 64, 64, 64, generator=generator), torch.randn(64, 64, 3, 3, generator=generator)
    reference = torch.nn.functional.conv2d(x.double(), weight.double())
    previous, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, True  # as a training process has it
    try:
        with Compute(torch.device("cuda")).kernels():
            on_gpu = torch.nn.functional.conv2d(x.cuda(), weight.cuda()).cpu().double()
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    assert (on_gpu - reference).abs().max() / reference.std() < 5e-5


@pytest.mark.cuda
def test_files_cross_between_cpu_and_cuda_with_identical_symbols(sample_image):
    import torch

    from diraccodec import api

    for source, target in (("cpu", "cuda"), ("cuda", "cpu")):
        data = diraccodec.encode(sample_image, 4, device=source)
        header = drc.unpack(data)
        symbols = {device: get_codec(None, api.compute_for(device)).read_stream(
            header.sections[drc.TAG_LATENTS], header.width, header.height, header.quality)
            for device in ("cpu", "cuda")}
        np.testing.assert_array_equal(symbols["cpu"].symbols, symbols["cuda"].symbols)
        np.testing.assert_array_equal(symbols["cpu"].hyper, symbols["cuda"].hyper)
        # the fixed-point hyper-synthesis ran on each device: its parameters agree to the bit
        np.testing.assert_array_equal(symbols["cpu"].table_ids, symbols["cuda"].table_ids)
        assert torch.equal(symbols["cpu"].mean, symbols["cuda"].mean)
        here = np.asarray(diraccodec.decode(data, device=source), dtype=np.int16)
        there = np.asarray(diraccodec.decode(data, device=target), dtype=np.int16)
        assert np.abs(here - there).max() <= 2 and np.mean(here != there) < 0.01
    old = VERSION_1_FILE.read_bytes()  # a version 1 file's float64 parameters come from the CPU on either
    here, there = (np.asarray(diraccodec.decode(old, steps=0, device=device), dtype=np.int16)
                   for device in ("cpu", "cuda"))
    assert np.abs(here - there).max() <= 2 and np.mean(here != there) < 0.01


def test_an_unknown_or_absent_device_is_a_clear_error(small_image):
    import torch

    with pytest.raises(InvalidOptionError, match=r"(unsupported|unknown) device"):
        diraccodec.encode(small_image, 3, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidOptionError, match="no CUDA device"):
            diraccodec.decode(diraccodec.encode(small_image, 3), device="cuda")
