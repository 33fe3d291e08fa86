"""The encoder's search for cheaper symbols (efforts 2-5): it lowers the real objective, files stay exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import diraccodec
from diraccodec.api import get_codec
from diraccodec.errors import InvalidOptionError
from diraccodec.transforms import search
from diraccodec.transforms.search import SearchSettings
from tests.conftest import captured_search, dirac


def objective(codec, original: np.ndarray, data: bytes, quality: float) -> float:
    """lambda * 255^2 * MSE + bpp of a latent stream, from its real size and decoded pixels."""
    height, width = original.shape[:2]
    decoded = codec.decompress(data, width, height, quality).astype(np.float64)
    mse = np.mean((decoded / 255 - original / 255) ** 2)
    return codec._lambda(quality) * 255**2 * mse + 8 * len(data) / (height * width)


@pytest.mark.parametrize("quality", [2, pytest.param(7, marks=pytest.mark.slow)])
def test_search_lowers_the_objective_on_a_photo(sample_image, quality, monkeypatch):
    """Measured with the range coder's real output and the decoder's real pixels, on an
    image cut into tiles of the search (windows of at most 500 latents)."""
    monkeypatch.setattr(search, "WINDOW_LATENTS", 500)
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
    read = codec.read_stream(codec.write_stream(searched, 4), width, height, 4)
    assert np.array_equal(read.symbols, searched.symbols) and np.array_equal(read.hyper, searched.hyper)


def test_table_bits_predict_the_stream_size(sample_image):
    codec = get_codec()
    latents = codec.analyse(np.asarray(sample_image), 5)
    predicted = codec.weights.latent_tables.bits(latents.symbols, latents.table_ids).sum()
    rows, tables = codec.stream.hyper_coding(latents.hyper.shape, 5)
    predicted += tables.bits(latents.hyper, rows).sum()
    actual = 8 * len(codec.write_stream(latents, 5))
    assert abs(predicted - actual) < 0.01 * actual + 64


def test_effort_1_rounds_plainly_and_the_default_and_higher_efforts_search(small_image):
    from diraccodec.api import EFFORT_PASSES
    from diraccodec.container import drc

    codec = get_codec()
    plain = codec.compress(np.asarray(small_image), 3.0)  # the codec alone rounds the analysis
    by_effort = {effort: drc.unpack(diraccodec.encode(small_image, 3, effort=effort)).sections[drc.TAG_LATENTS]
                 for effort in (1, 2, 4)}
    assert by_effort[1] == plain and diraccodec.encode(small_image, 3) == diraccodec.encode(small_image, 3, effort=2)
    assert by_effort[2] != plain and by_effort[4] != plain
    assert [EFFORT_PASSES[e] for e in sorted(EFFORT_PASSES)] == [0, 1, 2, 4, 8]


@pytest.mark.parametrize(("effort", "message"), [(0, "between 1 and 5, got 0"), (6, "between 1 and 5, got 6"),
                                                 (1.5, "a whole number, got 1.5"), (True, "a whole number, got True")])
def test_bad_efforts_are_refused(small_image, effort, message):
    with pytest.raises(InvalidOptionError, match=f"^effort must be {message}$"):
        diraccodec.encode(small_image, 3, effort=effort)


@pytest.mark.slow
def test_cli_effort_option(tmp_path, small_image):
    small_image.save(tmp_path / "a.png")
    # the search's choices may depend on the thread count (format.md: encoders may differ), so
    # the command runs with this process's count
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = dirac("encode", tmp_path / "a.png", "-q", "3", "-e", "2", "-o", tmp_path / "a.drc", env=threads)
    assert done.returncode == 0 and (tmp_path / "a.drc").read_bytes() == diraccodec.encode(small_image, 3, effort=2)
    refused = dirac("encode", tmp_path / "a.png", "-q", "3", "--effort", "9", "-o", tmp_path / "b.drc")
    assert refused.returncode == 2 and "--effort" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "b.drc").exists()


def test_progress_hears_of_every_tile(sample_image, monkeypatch):
    monkeypatch.setattr(search, "WINDOW_LATENTS", 500)  # cores of at most 14 latents
    calls: list[tuple[int, int]] = []
    image = sample_image.resize((480, 224))  # padded to 32 x 16 latents: 3 x 2 tiles of the search
    diraccodec.encode(image, 3, effort=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 6) for done in range(1, 7)]


def test_moves_that_raise_the_whole_tiles_objective_are_undone_by_the_next_pass(small_image, monkeypatch):
    """The next pass's forward checks the kept moves and undoes them, back to what that pass
    started from; the last pass's moves stand on their cells' word. Here the second pass of
    each search keeps a move of +1 on every symbol, which must raise the objective."""
    codec, original = get_codec(), np.asarray(small_image)
    assert not codec.stream.has_context  # the passes are not split between anchors and the rest
    plain = codec.analyse(original, 3).symbols
    one_pass = codec.analyse(original, 3, SearchSettings(passes=1)).symbols
    assert not np.array_equal(one_pass, plain)

    found = search._TileSearch.paying_moves
    calls = iter(range(1, 100))

    def second_raises_everything(self, current, *rest):
        moves = found(self, current, *rest)
        return torch.ones_like(moves) if next(calls) % 2 == 0 else moves  # the second call of each search

    monkeypatch.setattr(search._TileSearch, "paying_moves", second_raises_everything)
    raised = codec.analyse(original, 3, SearchSettings(passes=2)).symbols  # the last pass's moves stand
    assert np.array_equal(raised, one_pass + 1)
    undone = codec.analyse(original, 3, SearchSettings(passes=3)).symbols  # the third pass undoes them
    assert np.array_equal(undone, one_pass)


def test_the_search_moves_only_the_symbols_it_may(sample_image, monkeypatch):
    """A mask of movable positions (a context model's half) holds in every tile: here the
    rows below a staircase, which no tile's core lines up with."""
    monkeypatch.setattr(search, "WINDOW_LATENTS", 150)  # cores of at most 4 latents
    codec = get_codec()
    rgb = np.asarray(sample_image.crop((0, 0, 256, 192)))  # 12 x 16 latents: 3 x 4 tiles
    problem, plain = captured_search(codec, rgb, 3, monkeypatch)
    rows, columns = plain.shape[1:]
    movable = np.arange(rows)[:, None] > np.arange(columns)[None, :] // 2
    searched = search.search_symbols(dataclasses.replace(problem, movable=movable), plain, 1)
    assert np.array_equal(searched[:, ~movable], plain[:, ~movable])
    assert (searched[:, movable] != plain[:, movable]).sum() > 20  # the others did move


def test_each_tile_measures_its_cells_errors_as_the_whole_image_does(sample_image, monkeypatch):
    """The margin around a tile's core gives its synthesis the neighbours' latents on every
    side: the core's cells then err as they do in the whole image's synthesis, and the search
    weighs each move by what it really does to the decoded image."""
    monkeypatch.setattr(search, "WINDOW_LATENTS", 150)  # cores of at most 4 latents, windows of 12
    codec = get_codec()
    rgb = np.asarray(sample_image.crop((64, 32, 320, 288)))  # 16 x 16 latents: 4 x 4 tiles
    problem, symbols = captured_search(codec, rgb, 3, monkeypatch)
    rows, columns = symbols.shape[1:]
    tiles: list[tuple[tuple[slice, slice], tuple[int, int]]] = []
    monkeypatch.setattr(search, "_search_tile",
                        lambda problem, symbols, core, passes, shape: tiles.append((core, shape)))  # no search
    search.search_symbols(problem, symbols, 1)
    assert len(tiles) == 16 and tiles[0][1] == (12, 12)

    def cell_errors(core: tuple[slice, slice], shape: tuple[int, int]) -> torch.Tensor:
        """The errors of the core's cells as the tile's own synthesis measures them."""
        tile = search._TileSearch(problem, symbols, core, shape)
        window = torch.from_numpy(symbols[:, tile.window[0], tile.window[1]]).float()
        return tile.cell_errors(window).reshape(shape)[tile.inner]

    with torch.no_grad():
        whole = cell_errors((slice(0, rows), slice(0, columns)), (rows, columns))
        for core, shape in tiles:
            torch.testing.assert_close(cell_errors(core, shape), whole[core], rtol=1e-4, atol=1e-4)


def test_a_moves_predicted_change_is_its_first_and_second_order_error_and_its_bits(small_image, monkeypatch):
    """Each symbol's best move (-1, 0 or +1) minimises the weighted squared error's gradient
    step g m plus its second-order term E m^2 (the synthesis' response energy: a step's own
    pixel change, which the gradient cannot see) plus the move's exact price in bits."""
    codec = get_codec()
    problem, symbols = captured_search(codec, np.asarray(small_image), 3, monkeypatch)
    rows, columns = symbols.shape[1:]
    tile = search._TileSearch(problem, symbols, (slice(0, rows), slice(0, columns)), (rows, columns))
    candidate = torch.from_numpy(symbols).float().requires_grad_(True)
    (gradient,) = torch.autograd.grad(tile.cell_errors(candidate).sum(), candidate)
    values = torch.from_numpy(symbols)
    value_bits = tile.bits(values)
    best_change, best_move = search._best_moves(problem, gradient, values, value_bits, tile.bits)

    weight, energy = problem.distortion_weight, problem.energy.double()
    gradient = gradient.double()

    def change(move: int, second_order: bool = True) -> torch.Tensor:
        error = gradient * move + (energy * move**2 if second_order else 0)
        return weight * error + (tile.bits(values + move) - value_bits).double()

    def best(second_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
        changes = torch.stack([torch.zeros_like(gradient), change(-1, second_order), change(1, second_order)])
        return changes.min(dim=0).values, torch.tensor([0, -1, 1])[changes.argmin(dim=0)]  # ties: no move, then -1

    expected_change, expected_move = best(second_order=True)
    assert torch.equal(best_move.long(), expected_move)
    torch.testing.assert_close(best_change.double(), expected_change, rtol=1e-5, atol=1e-4)
    assert (best(second_order=False)[1] != expected_move).sum() > 10  # the gradient alone would choose otherwise
