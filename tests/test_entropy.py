"""Exact, lossless coding of integer latents, escapes included."""

from __future__ import annotations

import constriction
import numpy as np
import pytest
import torch

from diraccodec.entropy.coder import decode_values, encode_values
from diraccodec.entropy.models import FactorizedPrior
from diraccodec.entropy.tables import (
    TOTAL,
    build_factorized_tables,
    build_gaussian_tables,
    gaussian_scales,
    hyper_grid,
    quantize_pmf,
    snap_scales,
)


def round_trip(values: np.ndarray, table_ids: np.ndarray, tables) -> tuple[np.ndarray, int]:
    encoder = constriction.stream.queue.RangeEncoder()
    encode_values(encoder, values, table_ids, tables)
    words = encoder.get_compressed()
    decoder = constriction.stream.queue.RangeDecoder(words)
    return decode_values(decoder, table_ids, tables), words.nbytes


def test_quantized_pmf_sums_to_precision_and_keeps_every_symbol():
    frequencies = quantize_pmf(np.array([0.5, 0.25, 1e-12, 0.25]), tail_mass=1e-15)
    assert frequencies.sum() == TOTAL
    assert frequencies.min() >= 1
    assert frequencies[0] == pytest.approx(TOTAL / 2, abs=3)


def test_gaussian_latents_round_trip_exactly_with_escapes():
    tables = build_gaussian_tables(gaussian_scales())
    rng = np.random.default_rng(1)
    table_ids = rng.integers(0, tables.count, 50_000)
    values = np.round(rng.normal(0, gaussian_scales()[table_ids] * 1.5)).astype(np.int64)
    # values far outside every table's range go through the escape path
    extremes = np.array([10**6, -(10**9), 2**39 - 1, -(2**39), 513, -514, 2, -2])
    values[: extremes.size] = extremes
    table_ids[: extremes.size] = 0  # the narrowest table: +-1 only
    decoded, size = round_trip(values, table_ids, tables)
    np.testing.assert_array_equal(decoded, values)
    escapes = sum(1 for v, t in zip(values, table_ids, strict=True)
                  if not tables.offsets[t] <= v <= tables.offsets[t] + tables.lengths[t] - 2)
    assert escapes >= extremes.size
    assert size < values.size  # well under 8 bits per value: the tables fit the data


def test_escape_beyond_the_code_range_is_refused():
    tables = build_gaussian_tables(gaussian_scales())
    top = int(tables.offsets[0] + tables.lengths[0] - 2)  # the narrowest table's highest value
    for far in (2**41, top + 2**40, int(tables.offsets[0]) - 2**40):  # distances of 2^40 and more
        with pytest.raises(ValueError, match="latent value too large to code"):
            round_trip(np.array([far]), np.array([0]), tables)
    nearest = np.array([top + 2**40 - 1, int(tables.offsets[0]) - 2**40 + 1])  # the farthest that code
    np.testing.assert_array_equal(round_trip(nearest, np.zeros(2, np.int64), tables)[0], nearest)


def test_the_bytes_of_escapes_are_pinned():
    """The bytes of escapes (a sign, a bit count, then the bits in chunks of 16, lowest first;
    docs/format.md) as written today, pinned: a change would misread every file written before it."""
    import hashlib

    tables = build_gaussian_tables(gaussian_scales())
    values = np.array([10**6, -(10**9), 2**39 - 1, -(2**39), 513, -514, 2, -2, 2**15, 2**16 + 1, 0, 1])
    encoder = constriction.stream.queue.RangeEncoder()
    encode_values(encoder, values, np.zeros(values.size, np.int64), tables)
    words = encoder.get_compressed().astype("<u4").tobytes()
    assert hashlib.sha256(words).hexdigest() == "b11ab0d786ff4ffb59987d683b9e2e40f3267ed20d30dbcc38d164970862edec"


def test_factorized_tables_cover_the_mass_and_round_trip():
    torch.manual_seed(0)
    prior = FactorizedPrior(4).double()
    grid = hyper_grid()
    tables = build_factorized_tables(prior.cumulative(grid.expand(4, -1)), grid)
    assert tables.count == 4
    values = np.array([[-3, 0, 1, 200], [5, -600, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4]], dtype=np.int64)
    table_ids = np.broadcast_to(np.arange(4)[:, None], values.shape)
    decoded, _ = round_trip(values.ravel(), table_ids.ravel(), tables)
    np.testing.assert_array_equal(decoded, values.ravel())


def test_scales_snap_up_to_the_next_table_entry():
    scales = torch.from_numpy(gaussian_scales())
    snapped = snap_scales(torch.tensor([0.0, scales[0], scales[3] * 1.0001, 1e6], dtype=torch.float64), scales)
    assert snapped.tolist() == [0, 0, 4, scales.numel() - 1]


def test_prices_are_the_tables_costs_with_the_escape_payload():
    tables = build_gaussian_tables(gaussian_scales()[:4])
    table, offset, length = 2, int(tables.offsets[2]), int(tables.lengths[2])
    last = offset + length - 2  # the largest value the table codes without an escape
    values = torch.tensor([offset, 0, last, last + 1, last + 2, last + 4, offset - 1000])
    bits = tables.prices().bits(values, torch.full_like(values, table).to(torch.int16))
    row = tables.row(table).astype(np.float64)
    inside = 16 - np.log2(row[[0, -offset, length - 2]])
    escape = 16 - np.log2(row[-1])
    # distances 1, 2, 4 and 1000 beyond the edge: a side bit, 5.3 bits of length, floor(log2 d) bits
    expected = [*inside, *(escape + 6.3 + np.array([0, 1, 2, 9]))]
    assert bits.dtype == torch.float64 and bits.tolist() == pytest.approx(expected, abs=1e-12)
    # the numpy form used by the stream-size estimates is the same function
    assert np.array_equal(tables.bits(values.numpy(), np.full(values.shape, table)), bits.numpy())


def test_a_table_set_and_a_distribution_that_cannot_code_are_refused():
    """Tables longer than their rows, or with no symbol besides the escape, would read past the
    frequencies or code nothing; a distribution of more symbols than the precision has units
    cannot give each symbol a frequency of at least 1."""
    from diraccodec.entropy.tables import TableSet

    frequencies = np.full((2, 4), TOTAL // 4, np.int32)
    TableSet(frequencies, np.array([-1, 0], np.int32), np.array([4, 2], np.int32))
    for lengths in ([5, 4], [4, 1]):
        with pytest.raises(ValueError, match="table length out of range"):
            TableSet(frequencies, np.array([-1, 0], np.int32), np.array(lengths, np.int32))
    with pytest.raises(ValueError, match="cannot quantize this distribution"):
        quantize_pmf(np.ones(TOTAL + 5), tail_mass=0.0)
