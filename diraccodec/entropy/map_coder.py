"""Lossless coding of a small 2-D map of bounded integers (the diffusion decoder's detail map).

Each value is predicted from its left and upper neighbours (their mean, rounded down; the one
there is on the first row and column) and the difference is range coded under adaptive
counts. The counts are integers updated the same way on both sides, so the encoder and the
decoder always build identical models, on any machine. Neighbouring blocks of a photo have
similar values, so most differences are 0 or +-1 and cost one to two bits.
"""

from __future__ import annotations

import constriction
import numpy as np

from diraccodec.errors import CorruptFileError

COUNT_STEP = 32  # added to a difference's count each time it is seen


def _prior_counts(span: int) -> np.ndarray:
    """Initial counts over the differences -span..span: small differences likelier."""
    distance = np.abs(np.arange(-span, span + 1))
    return np.maximum(1, 64 >> np.minimum(distance, 6)).astype(np.int64)


def _predict(values: np.ndarray, row: int, column: int) -> int:
    if row == 0 and column == 0:
        return 0
    if row == 0:
        return int(values[row, column - 1])
    if column == 0:
        return int(values[row - 1, column])
    return (int(values[row, column - 1]) + int(values[row - 1, column])) // 2


def encode_map(values: np.ndarray, low: int, high: int) -> bytes:
    """(rows, columns) integers in [low, high] -> bytes (32-bit little-endian words)."""
    values = np.asarray(values, dtype=np.int64)
    if values.ndim != 2 or (values.size and (values.min() < low or values.max() > high)):
        raise ValueError(f"expected a 2-D map of integers in [{low}, {high}]")
    span = high - low
    counts = _prior_counts(span)
    encoder = constriction.stream.queue.RangeEncoder()
    for row in range(values.shape[0]):
        for column in range(values.shape[1]):
            symbol = int(values[row, column]) - _predict(values, row, column) + span
            encoder.encode(symbol, constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False))
            counts[symbol] += COUNT_STEP
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_map(payload: bytes, shape: tuple[int, int], low: int, high: int) -> np.ndarray:
    """Inverse of `encode_map`; a payload that decodes outside [low, high] is corrupt."""
    if len(payload) % 4:
        raise CorruptFileError("corrupt .drc file (detail map is not whole 32-bit words)")
    span = high - low
    counts = _prior_counts(span)
    values = np.zeros(shape, dtype=np.int64)
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    for row in range(shape[0]):
        for column in range(shape[1]):
            model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
            try:
                symbol = int(decoder.decode(model))
            except AssertionError:  # constriction's word for data no symbol sequence could produce
                raise CorruptFileError("corrupt .drc file (detail map: invalid coded data)") from None
            value = symbol - span + _predict(values, row, column)
            if not low <= value <= high:
                raise CorruptFileError("corrupt .drc file (detail map value out of range)")
            values[row, column] = value
            counts[symbol] += COUNT_STEP
    return values
