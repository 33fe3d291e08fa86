"""The encoder's search for cheaper symbols: it lowers the real objective, files stay exact."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import diraccodec
from diraccodec.api import get_codec
from diraccodec.errors import InvalidOptionError
from diraccodec.transforms.search import SearchSettings
from tests.test_cli import dirac


def objective(codec, original: np.ndarray, data: bytes, quality: float) -> float:
    """lambda * 255^2 * MSE + bpp of a latent stream, from its real size and decoded pixels."""
    height, width = original.shape[:2]
    decoded = codec.decompress(data, width, height, quality).astype(np.float64)
    mse = np.mean((decoded / 255 - original / 255) ** 2)
    return codec._lambda(quality) * 255**2 * mse + 8 * len(data) / (height * width)


@pytest.mark.parametrize("quality", [2, 7])
def test_search_lowers_the_objective_on_a_photo(sample_image, quality):
    """Measured with the range coder's real output and the decoder's real pixels, on an
    image wide enough for two tiles of the search (640 pixels = 40 latents > 32)."""
    codec = get_codec()
    original = np.asarray(sample_image.resize((640, 224), Image.Resampling.LANCZOS))
    plain = codec.compress(original, quality, SearchSettings(passes=0))
    searched = codec.compress(original, quality, SearchSettings(passes=2))
    before, after = objective(codec, original, plain, quality), objective(codec, original, searched, quality)
    assert after < before * 0.995, (before, after)


def test_searched_symbols_round_trip_exactly(sample_image):
    codec = get_codec()
    original = np.asarray(sample_image)
    plain = codec.analyse(original, 4)
    searched = codec.analyse(original, 4, SearchSettings(passes=2))
    assert np.array_equal(searched.hyper, plain.hyper)  # the tables stay those of the analysis
    assert 0 < np.mean(searched.symbols != plain.symbols) < 0.2
    assert np.all(np.abs(searched.symbols - plain.symbols) <= 2)
    height, width = original.shape[:2]
    read = codec.read_stream(codec.write_stream(searched), width, height)
    assert np.array_equal(read.symbols, searched.symbols) and np.array_equal(read.hyper, searched.hyper)


def test_table_bits_predict_the_stream_size(sample_image):
    codec = get_codec()
    latents = codec.analyse(np.asarray(sample_image), 5)
    _, table_ids = codec._entropy_parameters(latents.hyper)
    predicted = codec.weights.latent_tables.bits(latents.symbols, table_ids).sum()
    predicted += codec.weights.hyper_tables.bits(latents.hyper, codec._hyper_table_ids(latents.hyper.shape)).sum()
    actual = 8 * len(codec.write_stream(latents))
    assert abs(predicted - actual) < 0.01 * actual + 64


def test_search_is_on_by_default_and_zero_passes_round_plainly(small_image):
    from diraccodec.container import drc

    codec = get_codec()
    plain = codec.compress(np.asarray(small_image), 3.0)  # the codec alone rounds the analysis
    unsearched = drc.unpack(diraccodec.encode(small_image, 3, search_passes=0)).sections[drc.TAG_LATENTS]
    default = drc.unpack(diraccodec.encode(small_image, 3)).sections[drc.TAG_LATENTS]
    assert unsearched == plain and default != plain


@pytest.mark.parametrize("passes", [-1, 33, 1.5])
def test_bad_search_passes_are_refused(small_image, passes):
    with pytest.raises(InvalidOptionError, match="search passes"):
        diraccodec.encode(small_image, 3, search_passes=passes)


def test_cli_search_option(tmp_path, small_image):
    small_image.save(tmp_path / "a.png")
    done = dirac("encode", tmp_path / "a.png", "-q", "3", "--search", "0", "-o", tmp_path / "a.drc")
    assert done.returncode == 0 and (tmp_path / "a.drc").stat().st_size > 0
    refused = dirac("encode", tmp_path / "a.png", "-q", "3", "--search", "99", "-o", tmp_path / "b.drc")
    assert refused.returncode == 2 and "--search" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "b.drc").exists()


def test_progress_hears_of_every_tile(sample_image):
    calls: list[tuple[int, int]] = []
    image = sample_image.resize((640, 224))  # 40 x 16 latents: two tiles of the search
    diraccodec.encode(image, 3, search_passes=1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
