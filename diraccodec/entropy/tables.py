"""Integer probability tables for the range coder.

Every table is a row of integer frequencies summing to 2^16 over a contiguous range of
values plus one escape symbol, the tail mass outside that range. The tables are built
once, when the weights are exported, and stored in the weights file: the encoder and the
decoder read the same integers and so agree exactly, on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PRECISION_BITS = 16
TOTAL = 1 << PRECISION_BITS

# Scales of the Gaussian tables: a predicted scale is snapped up to the next entry.
SCALE_TABLE_SIZE = 64
SCALE_MIN = 0.11
SCALE_MAX = 64.0
GAUSSIAN_RANGE_SIGMAS = 8.0  # a table spans +-8 sigma; the rest goes through the escape
MAX_ESCAPE_BITS = 40  # escaped distances below 2^40 (diraccodec.entropy.coder)
# An escape's payload before the distance's bits, as the search prices it: a side bit and the
# bit length out of MAX_ESCAPE_BITS, 1 + log2(40) = 6.32 bits, priced 6.3
ESCAPE_HEADER_BITS = 6.3

# A hyper-latent table covers the values whose probability mass is at least this.
HYPER_TAIL_MASS = 2.0**-20
HYPER_SEARCH_RANGE = 512


@dataclass(frozen=True)
class TableSet:
    """Row t codes values offsets[t] .. offsets[t] + lengths[t] - 2; index lengths[t] - 1 is the escape."""

    frequencies: np.ndarray  # (tables, max_length) int32, zero-padded
    offsets: np.ndarray  # (tables,) int32
    lengths: np.ndarray  # (tables,) int32, escape included

    def __post_init__(self) -> None:
        rows = self.frequencies.shape[0]
        if self.offsets.shape != (rows,) or self.lengths.shape != (rows,):
            raise ValueError("table set arrays disagree in size")
        if np.any(self.lengths < 2) or np.any(self.lengths > self.frequencies.shape[1]):
            raise ValueError("table length out of range")

    @property
    def count(self) -> int:
        return int(self.frequencies.shape[0])

    def row(self, index: int) -> np.ndarray:
        return self.frequencies[index, : self.lengths[index]]

    def bits(self, values: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        """What coding each value with its table costs, in bits (escapes approximately)."""
        return self.prices().bits(torch.tensor(values), torch.tensor(table_ids)).numpy()  # copies: may be read-only

    def prices(self, device: torch.device | str = "cpu") -> Prices:
        """The cost of every value under every table, as tensors on `device`: the encoder's
        search prices its moves with the very tables the range coder will use, where it runs."""
        with np.errstate(divide="ignore"):  # the zero padding past a table's end costs infinity
            costs = PRECISION_BITS - np.log2(self.frequencies.astype(np.float64))
        return Prices(*(torch.from_numpy(array).to(device) for array in (costs, self.offsets, self.lengths)))

    def as_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.frequencies": torch.from_numpy(self.frequencies.astype(np.int32)),
            f"{prefix}.offsets": torch.from_numpy(self.offsets.astype(np.int32)),
            f"{prefix}.lengths": torch.from_numpy(self.lengths.astype(np.int32)),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> TableSet:
        return cls(
            frequencies=tensors[f"{prefix}.frequencies"].numpy().astype(np.int64),
            offsets=tensors[f"{prefix}.offsets"].numpy().astype(np.int64),
            lengths=tensors[f"{prefix}.lengths"].numpy().astype(np.int64),
        )


@dataclass(frozen=True)
class Prices:
    """A TableSet's costs on one device (TableSet.prices)."""

    costs: torch.Tensor  # (tables, max_length) float64 bits of each index; the escape's at lengths - 1
    offsets: torch.Tensor  # (tables,) int64
    lengths: torch.Tensor  # (tables,) int64, escape included

    def bits(self, values: torch.Tensor, table_ids: torch.Tensor) -> torch.Tensor:
        """Bits of each integer value (float64) under its table (int64 or int16 indices, same shape)."""
        table_ids = table_ids.long()
        offsets, last = self.offsets.take(table_ids), self.lengths.take(table_ids) - 2
        index = values - offsets
        below, above = index < 0, index > last
        outside = below | above
        cost = self.costs.take(table_ids * self.costs.shape[1] + torch.where(outside, last + 1, index))
        if not outside.any():
            return cost
        distance = torch.where(below, -index, index - last).clamp_min_(1)
        # the escape's payload (diraccodec.entropy.coder): its header and the distance's bits
        # below its leading one, floor(log2(distance))
        return cost + outside * (ESCAPE_HEADER_BITS + (torch.frexp(distance.double()).exponent - 1).double())


def quantize_pmf(pmf: np.ndarray, tail_mass: float) -> np.ndarray:
    """Integer frequencies summing to 2^16 for pmf + [tail_mass]; every entry at least 1."""
    probabilities = np.append(np.asarray(pmf, dtype=np.float64), max(tail_mass, 0.0))
    probabilities = probabilities / probabilities.sum()
    frequencies = np.maximum(1, np.floor(probabilities * TOTAL)).astype(np.int64)
    excess = int(frequencies.sum()) - TOTAL
    order = np.argsort(-frequencies, kind="stable")
    for index in order:  # give back the excess (or take the shortfall) from the largest entries
        if excess == 0:
            break
        change = min(excess, int(frequencies[index]) - 1) if excess > 0 else excess
        frequencies[index] -= change
        excess -= change
    if excess != 0 or frequencies.sum() != TOTAL:
        raise ValueError("cannot quantize this distribution to the table precision")
    return frequencies


def tables_from_counts(counts: np.ndarray, prior: TableSet, pseudo_counts: float) -> TableSet:
    """Tables over the same values as `prior`'s, from counts of the values seen (the escape's
    last in each row, as `prior` lays them out), each row drawn towards its prior row by
    `pseudo_counts` values distributed as the prior's: rows seen little stay near the prior."""
    rows, offsets = [], []
    for index, row_counts in enumerate(counts):
        source = index % prior.count  # the prior's row for the same values
        prior_row = prior.row(source) / TOTAL
        mass = np.asarray(row_counts[: len(prior_row)], dtype=np.float64) + pseudo_counts * prior_row
        rows.append(quantize_pmf(mass[:-1] / mass.sum(), float(mass[-1] / mass.sum())))
        offsets.append(int(prior.offsets[source]))
    return _pack(rows, offsets)


def _pack(rows: list[np.ndarray], offsets: list[int]) -> TableSet:
    width = max(len(r) for r in rows)
    frequencies = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        frequencies[index, : len(row)] = row
    return TableSet(frequencies, np.array(offsets, dtype=np.int64), np.array([len(r) for r in rows], dtype=np.int64))


def gaussian_scales() -> np.ndarray:
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_TABLE_SIZE))


def build_gaussian_tables(scales: np.ndarray) -> TableSet:
    """One table per scale, for round(y - mean) ~ N(0, scale) integrated over unit bins."""
    rows, offsets = [], []
    for scale in scales:
        radius = max(1, math.ceil(GAUSSIAN_RANGE_SIGMAS * float(scale)))
        values = np.arange(-radius, radius + 1)
        upper = np.array([0.5 * math.erfc((abs(v) - 0.5) / (scale * math.sqrt(2))) for v in values])
        lower = np.array([0.5 * math.erfc((abs(v) + 0.5) / (scale * math.sqrt(2))) for v in values])
        tail = math.erfc((radius + 0.5) / (scale * math.sqrt(2)))
        rows.append(quantize_pmf(upper - lower, tail))
        offsets.append(-radius)
    return _pack(rows, offsets)


def build_factorized_tables(cumulative: torch.Tensor, grid: torch.Tensor) -> TableSet:
    """Tables from a per-channel cumulative evaluated at `grid` (channels, n): bin edges k +- 1/2.

    `grid` holds the half-integers -R-0.5 .. R+0.5; each channel's table keeps the values
    whose bins lie within the central mass and escapes the rest.
    """
    cdf = cumulative.double().numpy()
    edges = grid.double().numpy()
    rows, offsets = [], []
    for channel_cdf in cdf:
        inside = np.nonzero((channel_cdf[1:] > HYPER_TAIL_MASS) & (channel_cdf[:-1] < 1 - HYPER_TAIL_MASS))[0]
        first, last = (int(inside[0]), int(inside[-1])) if inside.size else (len(edges) // 2 - 1,) * 2
        pmf = np.diff(channel_cdf[first : last + 2])
        tail = channel_cdf[first] + (1 - channel_cdf[last + 1])
        rows.append(quantize_pmf(np.maximum(pmf, 0), tail))
        offsets.append(round(float(edges[first]) + 0.5))
    return _pack(rows, offsets)


def hyper_grid() -> torch.Tensor:
    return torch.arange(-HYPER_SEARCH_RANGE, HYPER_SEARCH_RANGE + 2, dtype=torch.float64) - 0.5


def snap_scales(scales: torch.Tensor, table_scales: torch.Tensor) -> torch.Tensor:
    """Index of the smallest table scale at or above each scale (the last for larger ones),
    on the scales' device."""
    return torch.searchsorted(table_scales, scales, side="left").clamp_max_(len(table_scales) - 1)
