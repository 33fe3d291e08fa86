"""Lossless range coding of integer latents under integer tables, with escapes.

Each value is coded with the table its position selects. Values are grouped by table,
in ascending table order and raster order within a table, so that each group is one call
into constriction with one model. A value outside its table's range is coded as the
escape symbol and then, after all groups, as an Elias-gamma style number: which side
of the range, the bit length of the distance, and the bits themselves. Nothing is ever
clipped: every int64 latent within +-2^40 of its table round-trips exactly.
"""

from __future__ import annotations

import constriction
import numpy as np

from diraccodec.entropy.tables import MAX_ESCAPE_BITS, TableSet
from diraccodec.errors import CorruptFileError

CHUNK_BITS = 16

_model = constriction.stream.model


def _categorical(frequencies: np.ndarray) -> constriction.stream.model.Categorical:
    return _model.Categorical(frequencies.astype(np.float64), perfect=False)


def _groups(table_ids: np.ndarray, count: int) -> list[tuple[int, np.ndarray]]:
    """(table, positions) for each table in use, positions in ascending order."""
    order = np.argsort(table_ids, kind="stable")
    boundaries = np.searchsorted(table_ids[order], np.arange(count + 1))
    return [
        (table, order[boundaries[table] : boundaries[table + 1]])
        for table in range(count)
        if boundaries[table + 1] > boundaries[table]
    ]


def encode_values(
    encoder: constriction.stream.queue.RangeEncoder, values: np.ndarray, table_ids: np.ndarray, tables: TableSet
) -> None:
    """Append `values` (int64, flat) coded with tables[table_ids] to `encoder`."""
    values = np.asarray(values, dtype=np.int64).ravel()
    table_ids = np.asarray(table_ids).ravel()  # any integer type: a copy to int64 costs 8 bytes a latent
    escaped_values, escaped_offsets, escaped_lengths = [], [], []
    for table, positions in _groups(table_ids, tables.count):
        offset, length = int(tables.offsets[table]), int(tables.lengths[table])
        symbols = values[positions] - offset
        outside = (symbols < 0) | (symbols > length - 2)
        symbols[outside] = length - 1
        encoder.encode(symbols.astype(np.int32), _categorical(tables.row(table)))
        if outside.any():
            escaped_values.append(values[positions][outside])
            escaped_offsets.append(np.full(int(outside.sum()), offset))
            escaped_lengths.append(np.full(int(outside.sum()), length))
    if escaped_values:
        _encode_escapes(
            encoder, np.concatenate(escaped_values), np.concatenate(escaped_offsets), np.concatenate(escaped_lengths)
        )


def decode_values(
    decoder: constriction.stream.queue.RangeDecoder, table_ids: np.ndarray, tables: TableSet
) -> np.ndarray:
    """Inverse of `encode_values`: the values for positions that use tables[table_ids]."""
    table_ids = np.asarray(table_ids).ravel()
    values = np.zeros(table_ids.size, dtype=np.int64)
    escaped_positions, escaped_offsets, escaped_lengths = [], [], []
    for table, positions in _groups(table_ids, tables.count):
        offset, length = int(tables.offsets[table]), int(tables.lengths[table])
        symbols = decoder.decode(_categorical(tables.row(table)), positions.size).astype(np.int64)
        values[positions] = symbols + offset
        outside = symbols == length - 1
        if outside.any():
            escaped_positions.append(positions[outside])
            escaped_offsets.append(np.full(int(outside.sum()), offset))
            escaped_lengths.append(np.full(int(outside.sum()), length))
    if escaped_positions:
        positions = np.concatenate(escaped_positions)
        values[positions] = _decode_escapes(decoder, np.concatenate(escaped_offsets), np.concatenate(escaped_lengths))
    return values


def _bit_chunks(bit_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split each number's bit count into chunks of at most CHUNK_BITS: (owner, chunk bits)."""
    owners, sizes = [], []
    for owner, bits in enumerate(bit_counts.tolist()):
        while bits > 0:
            take = min(bits, CHUNK_BITS)
            owners.append(owner)
            sizes.append(take)
            bits -= take
    return np.array(owners, dtype=np.int64), np.array(sizes, dtype=np.int64)


def _encode_escapes(encoder, values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
    above = values > offsets + lengths - 2
    distance = np.where(above, values - (offsets + lengths - 2), offsets - values)  # >= 1
    if np.any(distance >= 1 << MAX_ESCAPE_BITS):
        raise ValueError("latent value too large to code")
    bit_counts = np.array([int(d).bit_length() - 1 for d in distance], dtype=np.int64)
    encoder.encode(above.astype(np.int32), _model.Uniform(2))
    encoder.encode(bit_counts.astype(np.int32), _model.Uniform(MAX_ESCAPE_BITS))
    owners, sizes = _bit_chunks(bit_counts)
    if owners.size:
        shifts = np.zeros_like(sizes)
        for owner in np.unique(owners):  # lowest chunk first
            mine = np.nonzero(owners == owner)[0]
            shifts[mine] = np.concatenate([[0], np.cumsum(sizes[mine])[:-1]])
        chunks = (distance[owners] >> shifts) & ((1 << sizes) - 1)
        encoder.encode(chunks.astype(np.int32), _model.Uniform(), (1 << sizes).astype(np.int32))


def _decode_escapes(decoder, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    count = offsets.size
    above = decoder.decode(_model.Uniform(2), count).astype(bool)
    bit_counts = decoder.decode(_model.Uniform(MAX_ESCAPE_BITS), count).astype(np.int64)
    if np.any(bit_counts >= MAX_ESCAPE_BITS):
        raise CorruptFileError("corrupt latent stream (escape length out of range)")
    distance = np.ones(count, dtype=np.int64) << bit_counts
    owners, sizes = _bit_chunks(bit_counts)
    if owners.size:
        chunks = decoder.decode(_model.Uniform(), (1 << sizes).astype(np.int32)).astype(np.int64)
        for owner in np.unique(owners):
            mine = np.nonzero(owners == owner)[0]
            shifts = np.concatenate([[0], np.cumsum(sizes[mine])[:-1]])
            distance[owner] += int(np.sum(chunks[mine] << shifts))
    return np.where(above, offsets + lengths - 2 + distance, offsets - distance)
