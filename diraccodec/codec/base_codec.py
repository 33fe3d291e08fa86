"""The base codec: RGB pixels to a range-coded latent stream and back.

The transforms and the encoder's search run here, where `Compute` says, in tiles that go in
and come out as 8-bit pixels, so that memory beyond one tile is that of the 8-bit image. The
entropy model, which encoder and decoder must compute alike on every device, is the
codec's `stream` (diraccodec.entropy.latent_stream).

The image is padded to a multiple of 64 pixels (the hyper-latents' stride). The stream codes
only the latents of the image's own 16-pixel cells; those of the padding beyond are 0 (their
predicted mean) on both sides, and cost nothing. Files of format versions 1 and 2 coded the
whole padded grid, which on a 481x321 photo is 18% more latents; they still decode so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from diraccodec.codec.hyperprior import MultiRateHyperprior, row_at
from diraccodec.compute import Compute
from diraccodec.entropy.context import ContextLayers, anchor_mask
from diraccodec.entropy.fixed_point import FixedPointNetwork
from diraccodec.entropy.latent_stream import (
    Arithmetic,
    Latents,
    LatentStreamCoder,
    image_cells,
    outside_cells,
)
from diraccodec.entropy.tables import TableSet
from diraccodec.errors import coded_size
from diraccodec.transforms.networks import HYPER_STRIDE, LATENT_STRIDE
from diraccodec.transforms.search import SearchProblem, SearchSettings, response_energy, search_symbols
from diraccodec.transforms.tiling import apply_tiled


def check_fixed_point(model: MultiRateHyperprior) -> None:
    """ValueError where the model's hyper-synthesis or context model has no fixed-point form
    (weights so large that their exact sums would clamp real inputs): the format cannot code it."""
    FixedPointNetwork(model.hyper_synthesis)
    if model.context is not None:
        ContextLayers.fixed_point(model.context)


@dataclass
class BaseWeights:
    """A base weights file, loaded: the model, the integer tables built from it and its identity."""

    model: MultiRateHyperprior
    hyper_tables: TableSet
    latent_tables: TableSet
    latent_scales: np.ndarray
    weights_id: bytes
    path: Path
    metadata: dict[str, str]
    # Optional tables fitted to each whole level's hyper-latents, rows level * N + channel for
    # levels 0 .. num_levels (modelfiles.write_with_level_tables); None: hyper_tables code every level.
    hyper_level_tables: TableSet | None = None
    # With level tables: the id of the same model coding every level with hyper_tables, an
    # earlier release's weights, whose files these decode too
    shared_tables_id: bytes | None = None

    def coding_for(self, file_weights_id: bytes) -> BaseWeights | None:
        """These weights as they read a file made with `file_weights_id`: themselves, the same
        model with the shared hyper tables alone for a file of its earlier release, else None."""
        if file_weights_id == self.weights_id:
            return self
        if file_weights_id == self.shared_tables_id:
            return replace(self, hyper_level_tables=None)
        return None


TILE_LATENTS = 32  # the analysis runs on tiles of 32x32 latents (512x512 pixels; 4x on a GPU), ...
SYNTHESIS_TILE_LATENTS = 64  # ... the synthesis, which keeps no float image, on 64x64 (1024 pixels) ...
MARGIN_LATENTS = 4  # ... each with 4 latents (64 pixels) of context on every side


def _halves(search: SearchSettings) -> tuple[SearchSettings, SearchSettings]:
    """The settings of a context model's two searches, the anchors' and the rest's.

    An effort's passes are the search's work, so the halves share them, the anchors taking the
    odd one: one pass (the default effort) searches the anchors alone and rounds the rest
    against the mean the anchors give them. Progress is reported over the halves that search.
    """
    passes = (-(-search.passes // 2), search.passes // 2)
    searching = sum(count > 0 for count in passes)
    report = search.progress

    def half(index: int) -> SearchSettings:
        if report is None or searching < 2:
            return replace(search, passes=passes[index])
        return replace(search, passes=passes[index],
                       progress=lambda done, total: report(index * total + done, 2 * total))

    return half(0), half(1)


# The lowest rate level: levels below 1 extrapolate the gains of levels 1 and 2 (_gains64), two
# levels' steps at most, where PSNR still falls with the bits as it does above level 1
# (docs/results.md, "Below level 1"). Below 0 the file is version 4 (diraccodec.container.drc).
LOWEST_LEVEL = -1.0


class BaseCodec:
    """The base codec of one set of weights on one device: image to latents and back, and the
    latents to a range-coded stream and back.

    The transforms run in `compute`'s mode (fast kernels; the encoder's search in bfloat16
    where native); the entropy parameters, which encoder and decoder must compute alike on
    every device, run in `stream` in fixed point (or float64 for version 1 files)."""

    def __init__(self, weights: BaseWeights, compute: Compute = Compute()) -> None:
        self.weights = weights
        self.compute = compute
        self.device = compute.device
        self.model = compute.prepare(weights.model)
        self.num_levels = self.model.config.num_levels
        self.stream = LatentStreamCoder(
            weights.model.hyper_synthesis, weights.model.context, hyper_tables=weights.hyper_tables,
            latent_tables=weights.latent_tables, latent_scales=weights.latent_scales,
            hyper_level_tables=weights.hyper_level_tables, num_levels=self.num_levels, device=self.device)
        self._log_gain64 = weights.model.log_gain.detach().cpu().double()
        self._log_inverse_gain64 = weights.model.log_inverse_gain.detach().cpu().double()
        self._response_energies: dict[float, torch.Tensor] = {}

    def for_file(self, file_weights_id: bytes) -> BaseCodec | None:
        """This codec as it reads a file made with `file_weights_id` (BaseWeights.coding_for):
        the same model, perhaps other hyper tables; None when these weights cannot read it."""
        weights = self.weights.coding_for(file_weights_id)
        if weights is None:
            return None
        if weights is self.weights:
            return self
        reader = copy.copy(self)  # shares the model and its prepared layers
        reader.weights = weights
        reader.stream = self.stream.with_hyper_level_tables(weights.hyper_level_tables)
        return reader

    def _gains64(self, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and inverse gain for a rate level (1-based), in float64, shape (M, 1, 1).

        Fractional levels interpolate the log-gains of their neighbours. Below level 1 the
        line through levels 1 and 2 goes on (level 0 is one level's step coarser than 1), so
        the lowest rates need no trained level of their own."""
        position = min(level - 1.0, self.num_levels - 1.0)  # 0-based, along the trained levels
        gain, inverse_gain = (row_at(table, position).exp()[:, None, None]
                              for table in (self._log_gain64, self._log_inverse_gain64))
        return gain, inverse_gain

    def _lambda(self, level: float) -> float:
        """The level's rate-distortion trade-off, geometric between levels for fractions and,
        as the gains, below level 1."""
        lambdas = np.log(self.model.config.lambdas)
        position = level - 1.0
        if position < 0:
            return float(np.exp(lambdas[0] + position * (lambdas[1] - lambdas[0])))
        return float(np.exp(np.interp(position, np.arange(lambdas.size), lambdas)))

    @staticmethod
    def _padded_pixels(rgb: np.ndarray) -> torch.Tensor:
        """(1, 3, Hp, Wp) uint8 view of the image with its edges replicated to the hyper grid."""
        height, width = rgb.shape[:2]
        padded_width, padded_height = coded_size(width, height)
        padded = np.pad(rgb, ((0, padded_height - height), (0, padded_width - width), (0, 0)), mode="edge")
        return torch.from_numpy(padded).permute(2, 0, 1)[None]

    @torch.no_grad()
    def analysis_latents(self, rgb: np.ndarray) -> torch.Tensor:
        """(M, Hp/16, Wp/16) float32 latents of the image before any level's gain, on the CPU.

        They do not depend on the level, so a search for a file size reuses them. Tiles are
        converted to floats on the device one at a time: the whole image is never float."""

        def analyse_tile(tile: torch.Tensor) -> torch.Tensor:
            return self.model.analysis(self.compute.tensor(tile).float().div_(255)).float().cpu()

        with self.compute.kernels():
            y = apply_tiled(analyse_tile, self._padded_pixels(rgb), Fraction(1, LATENT_STRIDE),
                            self.compute.tile(TILE_LATENTS) * LATENT_STRIDE, MARGIN_LATENTS * LATENT_STRIDE)
        return y[0].contiguous()

    @torch.no_grad()
    def quantize(self, y: torch.Tensor, level: float, rgb: np.ndarray | None = None,
                 search: SearchSettings = SearchSettings(), arithmetic: Arithmetic = Arithmetic.FIXED_POINT
                 ) -> Latents:
        """The integer symbols that the stream will carry for latents `y` at this level.

        search.passes > 0 lets the encoder move symbols where that lowers the training
        objective on the image `rgb` (diraccodec.transforms.search), measured after
        search.restoration (the decoder's filter at 0 steps) where given; 0 rounds. With the
        image, the padding's latents are 0 and the stream codes the image's cells only;
        without it, every latent is rounded and coded, as format versions 1 and 2 did (read such
        a stream with `read_stream(..., whole_grid=True)`).
        """
        if search.passes > 0 and rgb is None:
            raise ValueError("the search needs the image")
        y_scaled, hyper = self.hyper_latents(y, level)
        mean, table_ids, scale = self.stream.parameters(hyper, arithmetic)
        # With a context model the non-anchors are rounded again once the anchors set their mean,
        # so their scaled latents are kept aside.
        non_anchor = None if scale is None else ~anchor_mask(*y_scaled.shape[1:])
        y_rest = None if non_anchor is None else y_scaled[:, non_anchor]
        symbols = y_scaled.sub_(mean).round_().to(torch.int64).numpy()  # in place: image-sized float64
        del y_scaled
        cells = None if rgb is None else image_cells(*rgb.shape[:2])
        inside = None if cells is None else ~outside_cells(symbols.shape[1:], cells)
        if inside is not None:
            symbols[:, ~inside] = 0
        if non_anchor is None:
            if search.passes > 0:
                symbols = self._search(rgb, level, mean, table_ids, symbols, search, inside)
            return Latents(hyper, symbols, mean, table_ids, cells)
        # The anchors first, then the non-anchors against the mean the final anchors give them.
        is_anchor = ~non_anchor.numpy()
        anchors, rest = (part if inside is None else part & inside for part in (is_anchor, ~is_anchor))
        anchor_search, rest_search = _halves(search)
        if anchor_search.passes > 0:
            symbols = self._search(rgb, level, mean, table_ids, symbols, anchor_search, anchors)
        self.stream.refine_non_anchors(symbols, mean, scale, table_ids, arithmetic)
        del scale
        symbols[:, ~is_anchor] = y_rest.sub_(mean[:, non_anchor]).round_().to(torch.int64).numpy()
        del y_rest
        if inside is not None:
            symbols[:, ~inside] = 0
        if rest_search.passes > 0:
            symbols = self._search(rgb, level, mean, table_ids, symbols, rest_search, rest)
        return Latents(hyper, symbols, mean, table_ids, cells)

    def hyper_latents(self, y: torch.Tensor, level: float) -> tuple[torch.Tensor, np.ndarray]:
        """The latents scaled by the level's gain (float64) and their integer hyper-latents."""
        gain, _ = self._gains64(level)
        y_scaled = y.double() * gain
        with self.compute.kernels():  # full float32 on a GPU too: TF32 would round other hyper-latents
            z = self.model.hyper_analysis(self.compute.tensor(y_scaled.float()[None]))[0]
        return y_scaled, torch.round(z.float()).cpu().to(torch.int64).numpy()

    def _search(self, rgb: np.ndarray, level: float, mean: torch.Tensor, table_ids: np.ndarray,
                symbols: np.ndarray, search: SearchSettings, movable: np.ndarray | None = None) -> np.ndarray:
        height, width = rgb.shape[:2]
        inverse_gain = self._gains64(level)[1].float().to(self.device)
        if level not in self._response_energies:
            with self.compute.kernels():
                self._response_energies[level] = response_energy(self.model.synthesis, inverse_gain)
        problem = SearchProblem(
            synthesis=self.model.synthesis,
            pixels=self._padded_pixels(rgb)[0, :, :height, :width],
            mean=mean.float().to(self.device),
            inverse_gain=inverse_gain,
            table_ids=table_ids,
            price=self.stream.latent_prices.bits,
            distortion_weight=self._lambda(level) * 255**2 / 3,
            energy=self._response_energies[level],
            restoration=search.restoration,
            level=torch.tensor([float(level)], device=self.device, dtype=torch.float32),
            prepare=self.compute.tensor,
            precision=self.compute.autocast,
            movable=movable,
        )
        with torch.enable_grad(), self.compute.kernels():
            return search_symbols(problem, symbols, search.passes, search.progress)

    def analyse(self, rgb: np.ndarray, level: float, search: SearchSettings = SearchSettings()) -> Latents:
        """The latents the stream will carry for this image and level (see `quantize`)."""
        return self.quantize(self.analysis_latents(rgb), level, rgb, search)

    @torch.no_grad()
    def synthesize(self, latents: Latents, width: int, height: int, level: float) -> np.ndarray:
        """(H, W, 3) uint8 base reconstruction, synthesized tile by tile into 8-bit pixels."""
        _, inverse_gain = self._gains64(level)
        y_hat = ((torch.from_numpy(latents.symbols).double() + latents.mean) * inverse_gain).float()[None]

        def synthesize_tile(tile: torch.Tensor) -> torch.Tensor:
            pixels = self.model.synthesis(self.compute.tensor(tile)).float()
            return pixels.nan_to_num_(nan=0.0).clamp_(0, 1).mul_(255).round_().to(torch.uint8).cpu()

        with self.compute.kernels():  # in the exact mode, the same pixels with any number of threads
            x_hat = apply_tiled(synthesize_tile, y_hat, Fraction(LATENT_STRIDE),
                                self.compute.tile(SYNTHESIS_TILE_LATENTS), MARGIN_LATENTS)
        del y_hat
        return np.ascontiguousarray(x_hat[0, :, :height, :width].permute(1, 2, 0).numpy())

    def write_stream(self, latents: Latents, level: float) -> bytes:
        """The latent stream (the LATS section) of these latents at the file's level."""
        return self.stream.write(latents, level)

    def read_stream(self, payload: bytes, width: int, height: int, level: float,
                    arithmetic: Arithmetic = Arithmetic.FIXED_POINT, whole_grid: bool = False) -> Latents:
        """The latents of a stream at the file's level; `whole_grid`: it codes the padding's
        latents too (format versions 1 and 2)."""
        padded_width, padded_height = coded_size(width, height)
        hyper_shape = (self.model.config.channels, padded_height // HYPER_STRIDE, padded_width // HYPER_STRIDE)
        return self.stream.read(payload, hyper_shape, None if whole_grid else image_cells(height, width), level,
                                arithmetic)

    def compress(self, rgb: np.ndarray, level: float, search: SearchSettings = SearchSettings()) -> bytes:
        """An RGB image's latent stream at `level` (the LATS section), searched as `search` says."""
        return self.write_stream(self.analyse(rgb, level, search), level)

    def decompress(self, payload: bytes, width: int, height: int, level: float,
                   arithmetic: Arithmetic = Arithmetic.FIXED_POINT, whole_grid: bool = False) -> np.ndarray:
        """The base synthesis (height x width x 3, uint8) of a latent stream: no restoration
        filter, no diffusion; `arithmetic` and `whole_grid` read older format versions."""
        return self.synthesize(self.read_stream(payload, width, height, level, arithmetic, whole_grid), width,
                               height, level)
