"""The latent stream: integer hyper-latents and latent symbols to range-coded bytes and back.

The base codec's entropy model apart from its transforms, as CompressAI keeps its entropy
bottleneck apart. Determinism is designed in, because the decoder must rebuild the
encoder's tables bit for bit. The only computation that selects tables is the
hyper-synthesis (hyper-latents to the mean and scale of each latent), and the context model
where the weights have one. The current format runs both in fixed point
(diraccodec.entropy.fixed_point), exact on the codec's own device with any kernel and thread
count; files of format version 1 ran them in float64 on the CPU, in one thread unless MKL
sums alike on any thread count, and still decode that way.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch
from torch import nn

from diraccodec.compute import mkl_is_strict, single_thread
from diraccodec.entropy.coder import decode_values, encode_values
from diraccodec.entropy.context import ContextLayers, anchor_mask, context_parameters
from diraccodec.entropy.fixed_point import FixedPointNetwork
from diraccodec.entropy.tables import TableSet, snap_scales
from diraccodec.errors import CorruptFileError, is_out_of_memory
from diraccodec.transforms.networks import HYPER_STRIDE, LATENT_STRIDE
from diraccodec.transforms.tiling import tile_windows


class Arithmetic(enum.Enum):
    """How the hyper-synthesis and the context model compute the entropy parameters; a file's
    format version says which."""

    FLOAT64_CPU = "float64 on the CPU, in one fixed order"  # format version 1
    FIXED_POINT = "fixed point, exact on every device"  # format version 2 on


HYPER_TO_LATENT = HYPER_STRIDE // LATENT_STRIDE
WHOLE_HYPER_GRID = 64 * 64  # hyper-latents computed in one pass (an image of 16 megapixels) ...
HYPER_TILE, HYPER_MARGIN = 24, 4  # ... above it, tiles of 24 with 4 of context (its reach is under 4)


@dataclass
class Latents:
    """What a .drc file's latent stream carries, integer hyper-latents and latent symbols, with
    the entropy parameters they imply (computed once: the hyper-synthesis is the costly part)."""

    hyper: np.ndarray  # (N, Hp/64, Wp/64) int64
    symbols: np.ndarray  # (M, Hp/16, Wp/16) int64: round(y * gain - mean)
    mean: torch.Tensor  # (M, Hp/16, Wp/16) float64, predicted from `hyper`
    table_ids: np.ndarray  # (M, Hp/16, Wp/16) the range coder's table of each symbol
    # the latent rows and columns the stream codes; the symbols beyond are 0 (None: all, as
    # format versions 1 and 2 coded them)
    cells: tuple[int, int] | None = None

    def coded(self, values: np.ndarray, part: np.ndarray | None = None) -> np.ndarray:
        """(M, rows, columns) values -> those the stream carries, in its order: the coded cells,
        or the positions of `part` ((rows, columns) bool) among them."""
        rows, columns = self.cells or values.shape[1:]
        values = values[:, :rows, :columns]
        return values if part is None else values[:, part[:rows, :columns]]

    def fill(self, values: np.ndarray, part: np.ndarray | None = None) -> None:
        """The inverse of `coded` for the symbols: decoded values (flat) into their places."""
        rows, columns = self.cells or self.symbols.shape[1:]
        cells = self.symbols[:, :rows, :columns]  # a view: the values land in the symbols
        if part is None:
            cells[...] = values.reshape(cells.shape)
        else:
            cells[:, part[:rows, :columns]] = values.reshape(cells.shape[0], -1)


def image_cells(height: int, width: int) -> tuple[int, int]:
    """The latent rows and columns that cover an image: its 16-pixel cells."""
    return -(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE)


def outside_cells(shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """(rows, columns) bool: the latent positions of the padding beyond `cells`."""
    outside = np.ones(shape, dtype=bool)
    outside[: cells[0], : cells[1]] = False
    return outside


def _anchor_parts(shape: tuple[int, int]) -> list[np.ndarray]:
    """A context model's two halves, in the stream's order: the anchors, then the rest."""
    is_anchor = anchor_mask(*shape).numpy()
    return [is_anchor, ~is_anchor]


def _exact_sums() -> contextlib.AbstractContextManager[None]:
    """MKL in strict mode sums float64 alike on any thread count; otherwise one thread does."""
    return contextlib.nullcontext() if mkl_is_strict() else single_thread()


class LatentStreamCoder:
    """The entropy model of one set of base weights on one device: the entropy parameters of
    every latent from the integer hyper-latents, and the range coding of both.

    `hyper_tables` code the hyper-latents, channel c with row c, unless `hyper_level_tables`
    (rows level * N + c, levels 0 .. num_levels) are given; `latent_scales` are the scales of
    the latents' tables, whose id a predicted scale snaps to."""

    def __init__(self, hyper_synthesis: nn.Sequential, context: nn.Module | None, *, hyper_tables: TableSet,
                 latent_tables: TableSet, latent_scales: np.ndarray, hyper_level_tables: TableSet | None,
                 num_levels: int, device: torch.device) -> None:
        self.device = device
        self.hyper_tables, self.latent_tables, self.hyper_level_tables = hyper_tables, latent_tables, hyper_level_tables
        self.num_levels = num_levels
        self.latent_channels = hyper_synthesis[-1].out_channels // 2  # a mean and a scale per latent
        self.latent_prices = latent_tables.prices(device)
        self._hyper_synthesis64 = copy.deepcopy(hyper_synthesis).cpu().double()
        self._hyper_synthesis_fixed = FixedPointNetwork(hyper_synthesis, device)
        self._latent_scales = torch.from_numpy(latent_scales).to(device, torch.float64)
        self._context_layers = None if context is None else {
            Arithmetic.FLOAT64_CPU: ContextLayers.float64(context),
            Arithmetic.FIXED_POINT: ContextLayers.fixed_point(context, device)}

    @property
    def has_context(self) -> bool:
        return self._context_layers is not None

    def with_hyper_level_tables(self, tables: TableSet | None) -> LatentStreamCoder:
        """The same coder (sharing its prepared layers) with other tables per level, or none."""
        coder = copy.copy(self)
        coder.hyper_level_tables = tables
        return coder

    def parameters(self, hyper: np.ndarray, arithmetic: Arithmetic = Arithmetic.FIXED_POINT
                   ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
        """The mean (float64) and table index (int16) of every latent from integer hyper-latents,
        on the CPU, the same on every machine, so the decoder rebuilds the encoder's tables;
        with a context model they are final at the anchors only, and the hyper-synthesis'
        float64 scale (where it ran) comes third, for the context to refine the rest.

        In fixed point it runs on the coder's device, in float64 on the CPU in one fixed order.
        A grid of up to WHOLE_HYPER_GRID hyper-latents (a 16-megapixel image) runs in one pass;
        larger ones in tiles, whose float64 im2col buffers would otherwise take gigabytes. The
        tiling depends on the image's size alone, so an encoder and a decoder tile alike."""
        if arithmetic is Arithmetic.FIXED_POINT:
            synthesis, device, sums = self._hyper_synthesis_fixed, self.device, contextlib.nullcontext()
        else:
            synthesis, device, sums = self._hyper_synthesis64, torch.device("cpu"), _exact_sums()
        z = torch.from_numpy(hyper).to(device, torch.float64)[None]
        channels = self.latent_channels
        height, width = hyper.shape[-2] * HYPER_TO_LATENT, hyper.shape[-1] * HYPER_TO_LATENT
        mean = torch.empty((channels, height, width), dtype=torch.float64, device=device)
        scale = None if self._context_layers is None else torch.empty_like(mean)
        table_ids = torch.empty((channels, height, width), dtype=torch.int16, device=device)
        table_scales = self._latent_scales.to(device)
        whole = hyper.shape[-2] * hyper.shape[-1] <= WHOLE_HYPER_GRID
        tile = max(hyper.shape[-2:]) if whole else HYPER_TILE
        with torch.no_grad(), sums:
            for (top, left, bottom, right), extent in tile_windows(*hyper.shape[-2:], tile, HYPER_MARGIN):
                top_ext, left_ext, bottom_ext, right_ext = extent
                out = synthesis(z[..., top_ext:bottom_ext, left_ext:right_ext])[0]
                rows = slice((top - top_ext) * HYPER_TO_LATENT, (bottom - top_ext) * HYPER_TO_LATENT)
                columns = slice((left - left_ext) * HYPER_TO_LATENT, (right - left_ext) * HYPER_TO_LATENT)
                target = (slice(None), slice(top * HYPER_TO_LATENT, bottom * HYPER_TO_LATENT),
                          slice(left * HYPER_TO_LATENT, right * HYPER_TO_LATENT))
                mean[target] = out[:channels, rows, columns]
                tile_scale = out[channels:, rows, columns].abs_()
                if scale is not None:
                    scale[target] = tile_scale
                table_ids[target] = snap_scales(tile_scale.contiguous(), table_scales).to(torch.int16)
                del out, tile_scale
        return mean.cpu(), table_ids.cpu().numpy(), scale  # the scale stays where the context will run

    def refine_non_anchors(self, symbols: np.ndarray, mean: torch.Tensor, scale: torch.Tensor | None,
                           table_ids: np.ndarray, arithmetic: Arithmetic) -> None:
        """Replace the non-anchors' mean and table, in place, by the context model's prediction
        from the anchors' symbols (non-anchor symbols are not read): in fixed point on the
        coder's device, in float64 on the CPU in a fixed order for format version 1."""
        assert self._context_layers is not None and scale is not None, "only weights with a context model refine"
        layers = self._context_layers[arithmetic]
        device = scale.device
        flat_mean, flat_table_ids = mean.view(mean.shape[0], -1), table_ids.reshape(table_ids.shape[0], -1)
        assert np.shares_memory(flat_table_ids, table_ids), "a view, so that the writes land in table_ids"
        table_scales = self._latent_scales.to(device)
        with contextlib.nullcontext() if arithmetic is Arithmetic.FIXED_POINT else _exact_sums():
            for positions, chunk_mean, chunk_scale in context_parameters(
                    layers, torch.from_numpy(symbols).to(device), mean.to(device), scale):
                positions = positions.cpu()
                flat_mean[:, positions] = chunk_mean.cpu()
                flat_table_ids[:, positions.numpy()] = snap_scales(chunk_scale, table_scales).cpu().numpy()

    def hyper_coding(self, shape: tuple[int, ...], level: float) -> tuple[np.ndarray, TableSet]:
        """Each hyper-latent's table row, and the tables: channel c's row of the shared tables
        or, where there are tables per level, of the file's whole level (levels below 1: level
        0's), row level * N + c."""
        rows = np.broadcast_to(np.arange(shape[0])[:, None, None], shape)
        if self.hyper_level_tables is None:
            return rows, self.hyper_tables
        row_level = min(max(math.floor(level), 0), self.num_levels)
        return rows + row_level * shape[0], self.hyper_level_tables

    def write(self, latents: Latents, level: float) -> bytes:
        """The hyper-latents, then the latents; with a context model the anchors' before the rest.
        The level picks the hyper-latents' tables where there are tables per level."""
        encoder = constriction.stream.queue.RangeEncoder()
        encode_values(encoder, latents.hyper, *self.hyper_coding(latents.hyper.shape, level))
        parts = [None] if self._context_layers is None else _anchor_parts(latents.symbols.shape[1:])
        for part in parts:
            encode_values(encoder, latents.coded(latents.symbols, part), latents.coded(latents.table_ids, part),
                          self.latent_tables)
        return encoder.get_compressed().astype("<u4").tobytes()

    def read(self, payload: bytes, hyper_shape: tuple[int, int, int], cells: tuple[int, int] | None, level: float,
             arithmetic: Arithmetic = Arithmetic.FIXED_POINT) -> Latents:
        """The latents of a stream at the file's level, its hyper-latents of `hyper_shape`;
        `cells`: the latent rows and columns it codes (None: all, format versions 1 and 2)."""
        if len(payload) % 4:
            raise CorruptFileError("corrupt .drc file (latent stream length is not a whole number of words)")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        tables = self.latent_tables
        hyper_coding = self.hyper_coding(hyper_shape, level)
        try:
            decoder = constriction.stream.queue.RangeDecoder(words)
            hyper = decode_values(decoder, *hyper_coding)
            hyper = hyper.reshape(hyper_shape)
            mean, table_ids, scale = self.parameters(hyper, arithmetic)
            latents = Latents(hyper, np.zeros(table_ids.shape, dtype=np.int64), mean, table_ids, cells)
            parts = [None] if scale is None else _anchor_parts(table_ids.shape[1:])
            latents.fill(decode_values(decoder, latents.coded(table_ids, parts[0]), tables), parts[0])
            if scale is not None:  # the rest, under the tables the anchors give them
                self.refine_non_anchors(latents.symbols, mean, scale, table_ids, arithmetic)
                del scale
                latents.fill(decode_values(decoder, latents.coded(table_ids, parts[1]), tables), parts[1])
        except (ValueError, RuntimeError, OverflowError, AssertionError) as error:
            if is_out_of_memory(error):
                raise
            # constriction reports data that no symbol sequence could produce by an assertion
            raise CorruptFileError(f"corrupt .drc file (latent stream: {error})") from None
        return latents

    def information_bits(self, latents: Latents, level: float) -> tuple[float, float]:
        """Bits of the hyper-latents and of the coded latents, each value's -log2 of its
        probability under the table that codes it: where a stream's bytes go (the range coder's
        total is within a few bytes of their sum)."""
        rows, tables = self.hyper_coding(latents.hyper.shape, level)
        hyper = tables.bits(latents.hyper, rows)
        coded = self.latent_tables.bits(latents.coded(latents.symbols), latents.coded(latents.table_ids))
        return float(hyper.sum()), float(coded.sum())
