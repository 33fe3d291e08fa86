"""The encoder's search for cheaper latent symbols (rate-distortion optimised quantisation).

Rounding every latent to the nearest integer is what the analysis transform was trained
to make good, but it ignores what each symbol costs and how the synthesis actually uses
it on this image. The decoder does not care how the symbols were chosen, so the encoder
may move any symbol by one step wherever that lowers the training objective
lambda * 255^2 * MSE + bits on the image itself. The bitstream and the decoder stay the
same; only encoding takes longer.

Each pass predicts the change of every possible move from one gradient of the squared error
(first order), the synthesis' response energy per channel (second order) and the exact cost
under the range coder's tables, and tries the most promising eighth of the moves that pay. The
trial's error is measured per latent cell (its 16x16 pixels), so that each cell keeps its
moves only where its own share of the objective falls. The next pass's forward checks that the
whole tile's objective fell; if not, it undoes those moves and the tile's search ends. The
last pass's moves go unchecked. The hyper-latents stay as the analysis made them, so every
table, and so every price, stays fixed during the search. (Optimising them first for the rate,
by gradient descent, changed files by -0.1% on training photos: not worth a pass.) With a
context model, the encoder searches the anchors, then, with passes to spare, the non-anchors,
whose tables the anchors set. Tiles of latents with a margin of context keep the memory
bounded for any image size.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diraccodec.options import Progress
from diraccodec.transforms.networks import LATENT_STRIDE
from diraccodec.transforms.tiling import return_freed_memory

# Searched in windows of at most 1,800 latents (0.46 MP; a Kodak image is one window of
# 1,536) with 4 latents of the neighbours' symbols and pixels around each tile. A window's
# gradient takes about 1 KB of memory per pixel, so this bounds the encoder's memory for any
# image size. Since each cell decides for itself, the tile's size sets the cost (the margins)
# but not the gain.
WINDOW_LATENTS = 1800
MARGIN_LATENTS = 4
# Latents around one impulse. Measured on the shipped synthesis at levels 1, 3 and 8: 3 gives
# every channel's energy within 0.5% of a 9x9 grid's (median 0.01%), 5 within 4e-7; 3 costs
# a third of 5 (0.36 s against 1.02 s a level on 2 cores, once per level and process).
IMPULSE_GRID = 3
# The share of the paying moves (best first) tried at once; a set none of whose cells pays
# is retried with half as many. Chosen on training photos (8 SUN crops of 768x512, levels
# 1/3/5/7, one pass): BD-rate against plain rounding -4.08% with an eighth, -3.96% with a
# quarter, -2.81% with a half.
MOVE_FRACTION = 0.125
RETRIES = 4


Pricing = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (symbols, table ids) -> float64 bits of each
Filter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (image, level) -> filtered image


@dataclass
class SearchProblem:
    """One image's search: its pixels, its latents' fixed context and the objective's weights."""

    synthesis: nn.Module
    pixels: torch.Tensor  # (3, H, W) uint8 on the CPU, the image without padding
    mean: torch.Tensor  # (M, h, w) predicted mean of every latent (gain-scaled units)
    inverse_gain: torch.Tensor  # (M, 1, 1)
    table_ids: np.ndarray  # (M, h, w)
    price: Pricing  # the range coder's cost of symbols under their tables, on the search's device
    distortion_weight: float  # lambda * 255^2 / 3: bits per unit of squared error summed over RGB
    energy: torch.Tensor  # (M, 1, 1) response_energy at this level
    # the decoder's restoration filter at this level, if it has one: the error then counts
    # after the filter, as the user will see the image at 0 steps
    restoration: Filter | None = None
    level: torch.Tensor | None = None  # (1,) the 1-based level, for the filter
    # the networks' input format (channels-last for oneDNN) and the context they run in: the
    # mode's precision (bfloat16 in the fast mode) halves a pass's time with the same gain on
    # training photos
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor
    precision: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    # (h, w) bool: the positions whose symbols may move (None: all). A context model searches its
    # anchors and its non-anchors apart, each half's prices fixed by what is coded before it.
    movable: np.ndarray | None = None


def response_energy(synthesis: nn.Module, inverse_gain: torch.Tensor) -> torch.Tensor:
    """Squared pixel change (summed over RGB) from one unit step of one symbol, per channel.

    Measured by the synthesis' response to an impulse on flat latents: the second-order
    term of a move's effect, which the gradient alone cannot give.
    """
    channels = inverse_gain.shape[0]
    impulses = torch.zeros(channels, channels, IMPULSE_GRID, IMPULSE_GRID, device=inverse_gain.device)
    impulses[torch.arange(channels), torch.arange(channels), IMPULSE_GRID // 2, IMPULSE_GRID // 2] = 1.0
    with torch.no_grad():
        flat = synthesis(torch.zeros_like(impulses[:1]))
        energy = torch.cat(
            [(synthesis(chunk * inverse_gain) - flat).pow(2).sum((1, 2, 3)) for chunk in impulses.split(32)]
        )
    return energy[:, None, None]


@dataclass(frozen=True)
class SearchSettings:
    """What the encoder's search may spend (passes=0: plain rounding) and whom it reports to."""

    passes: int = 0
    # the decoder's filter at 0 steps: the error is counted as a 0-step decode will show it
    restoration: Filter | None = None
    progress: Progress | None = None


def search_symbols(
    problem: SearchProblem, symbols: np.ndarray, passes: int, progress: Progress | None = None
) -> np.ndarray:
    """Symbols (M, h, w) int64 moved where each cell's measured share of the objective fell,
    tile by tile (every pass but the last also checked against the whole tile's objective)."""
    if passes <= 0:
        return symbols
    symbols = symbols.copy()
    rows, columns = symbols.shape[1:]
    tile = max(rows, columns) if rows * columns <= WINDOW_LATENTS else math.isqrt(WINDOW_LATENTS) - 2 * MARGIN_LATENTS
    row_cores, column_cores = _spans(rows, tile), _spans(columns, tile)
    # every window one size, the largest core with its margins (or the whole image)
    window_shape = (_window_size(row_cores, rows), _window_size(column_cores, columns))
    tiles = [(row, column) for row in row_cores for column in column_cores]
    for done, core in enumerate(tiles, 1):
        _search_tile(problem, symbols, core, passes, window_shape)
        if len(tiles) > 1:  # one tile's blocks are reused by the next, not left to fragment
            return_freed_memory(rows * columns * LATENT_STRIDE**2)
        if progress is not None:
            progress(done, len(tiles))
    return symbols


def _spans(length: int, tile: int) -> list[slice]:
    """The fewest cores of at most `tile` latents that cover `length`, all of about one size:
    a sliver at the edge would cost a whole window."""
    count = -(-length // tile)
    bounds = [round(i * length / count) for i in range(count + 1)]
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def _best_moves(
    problem: SearchProblem, gradient: torch.Tensor, values: torch.Tensor, value_bits: torch.Tensor,
    bits: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each symbol's best single move (-1, 0 or +1) and the objective's predicted change."""
    best_change = torch.zeros_like(gradient)
    best_move = torch.zeros_like(gradient)
    for move in (-1, 1):
        predicted = problem.distortion_weight * (gradient * move + problem.energy * move * move)
        predicted = predicted + (bits(values + move) - value_bits).float()
        better = predicted < best_change
        best_change = torch.where(better, predicted, best_change)
        best_move = torch.where(better, torch.full_like(best_move, move), best_move)
    return best_change, best_move


def _window_size(cores: list[slice], length: int) -> int:
    return min(max(core.stop - core.start for core in cores) + 2 * MARGIN_LATENTS, length)


def _window(core: slice, length: int, size: int) -> tuple[int, int]:
    """The core with its margin, shifted inwards at the image's edges so that every window
    has the same size: the allocator then reuses one tile's blocks instead of fragmenting
    (clipped windows of varied sizes made the peak grow by 430 bytes per pixel, 0.6 against
    2.4 MP; these by about 50)."""
    start = min(max(core.start - MARGIN_LATENTS, 0), length - size)
    return start, start + size


def _search_tile(
    problem: SearchProblem, symbols: np.ndarray, core: tuple[slice, slice], passes: int, window_shape: tuple[int, int]
) -> None:
    """Improve symbols[:, core] in place, the tile's margin held fixed as context.

    Each pass's forward also measures the whole tile's objective, which checks the moves the
    pass before kept: if it did not fall, those moves are undone and the search of the tile
    ends. The last pass's moves stand on their cells' own measured changes, unchecked: a
    check of its own, one more forward, was a quarter of the search, and with the shipped
    weights (no context model) it never failed on 8 BSDS500 training photos at levels 1, 3,
    5 and 7 (160 passes at efforts 2 and 4). With a context model each half gets about half
    of the passes, so at efforts 2 and 3 neither half is checked."""
    tile = _TileSearch(problem, symbols, core, window_shape)
    current = torch.from_numpy(symbols[:, tile.window[0], tile.window[1]]).float().to(tile.device)
    before: tuple[float, np.ndarray] | None = None  # the objective and core symbols before the last kept moves
    for _ in range(passes):
        candidate = current.clone().requires_grad_(True)
        with problem.precision():
            errors = tile.cell_errors(candidate)
        values = current[:, tile.inner[0], tile.inner[1]].to(torch.int64)
        value_bits = tile.bits(values)
        objective = problem.distortion_weight * errors.sum().item() + value_bits.sum().item()
        if before is not None and objective >= before[0]:
            symbols[:, core[0], core[1]] = before[1]
            return
        (gradient,) = torch.autograd.grad(errors.sum(), candidate)  # not the weights'
        gradient = gradient[:, tile.inner[0], tile.inner[1]].float()
        best_change, best_move = _best_moves(problem, gradient, values, value_bits, tile.bits)
        moves = tile.paying_moves(current, errors.detach(), value_bits, best_change, best_move)
        if moves is None:
            return
        before = (objective, symbols[:, core[0], core[1]].copy())
        current, kept_values = tile.moved(current, moves)
        symbols[:, core[0], core[1]] = kept_values.cpu().numpy()


class _TileSearch:
    """One tile of the search: its window of pixels and latents (the core and its margin), and
    the objective's parts measured over it."""

    def __init__(self, problem: SearchProblem, symbols: np.ndarray, core: tuple[slice, slice],
                 window_shape: tuple[int, int]) -> None:
        self.problem = problem
        top, bottom = _window(core[0], symbols.shape[1], window_shape[0])
        left, right = _window(core[1], symbols.shape[2], window_shape[1])
        self.window = (slice(top, bottom), slice(left, right))
        self.inner = (slice(core[0].start - top, core[0].stop - top), slice(core[1].start - left, core[1].stop - left))
        self.device = device = problem.mean.device
        stride = LATENT_STRIDE
        self.pixels = problem.pixels[:, top * stride : bottom * stride, left * stride : right * stride].to(
            device).float() / 255
        self.mean = problem.mean[:, self.window[0], self.window[1]]
        self.table_ids = torch.from_numpy(np.ascontiguousarray(problem.table_ids[:, core[0], core[1]])).to(device)
        self.owner = _cell_owners(bottom - top, right - left, self.inner, device)
        self.core_cells = (core[0].stop - core[0].start) * (core[1].stop - core[1].start)
        self.movable = (torch.ones((), dtype=torch.bool) if problem.movable is None
                        else torch.from_numpy(np.ascontiguousarray(problem.movable[core[0], core[1]]))).to(device)

    def cell_errors(self, candidate: torch.Tensor) -> torch.Tensor:
        """The squared error of each latent's 16x16 cell of pixels, (rows * columns,)."""
        problem, stride = self.problem, LATENT_STRIDE
        height, width = self.pixels.shape[1:]
        image = problem.synthesis(problem.prepare(((candidate + self.mean) * problem.inverse_gain)[None]))
        if problem.restoration is not None:
            image = problem.restoration(image.clamp(0, 1), problem.level)
        error = (image[0].float()[:, :height, :width] - self.pixels).pow(2).sum(0)
        rows, columns = candidate.shape[1:]
        error = F.pad(error, (0, columns * stride - width, 0, rows * stride - height))
        return error.reshape(rows, stride, columns, stride).sum((1, 3)).flatten()

    def bits(self, values: torch.Tensor) -> torch.Tensor:
        return self.problem.price(values, self.table_ids)

    def moved(self, current: torch.Tensor, moves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's symbols with `moves` applied to the core, and the core's symbols."""
        trial = current.clone()
        trial[:, self.inner[0], self.inner[1]] += moves
        return trial, trial[:, self.inner[0], self.inner[1]].to(torch.int64)

    def paying_moves(
        self, current: torch.Tensor, errors: torch.Tensor, value_bits: torch.Tensor,
        best_change: torch.Tensor, best_move: torch.Tensor,
    ) -> torch.Tensor | None:
        """Try the best MOVE_FRACTION of the paying moves at once and return those whose cells'
        own change of the objective, measured, pays; tried with half as many where no cell's
        does, RETRIES times. None: nothing pays."""
        problem = self.problem
        paying = (best_change < 0) & self.movable
        fraction = MOVE_FRACTION
        for _ in range(RETRIES + 1):
            if not paying.any():
                return None
            threshold = torch.quantile(best_change[paying], fraction) if paying.sum() > 1 else 0.0
            moves = best_move * (paying & (best_change <= threshold))
            trial, trial_values = self.moved(current, moves)
            with torch.no_grad(), problem.precision():
                trial_errors = self.cell_errors(trial)
            # keep the moves of the cells whose own share of the change pays
            bit_change = (self.bits(trial_values) - value_bits).float().sum(0).flatten()
            change = problem.distortion_weight * torch.zeros(self.core_cells, device=self.device).index_add_(
                0, self.owner, trial_errors - errors) + bit_change
            kept = (change < 0).reshape(moves.shape[1:])
            if kept.any():
                return moves * kept
            fraction /= 2
        return None


def _cell_owners(rows: int, columns: int, inner: tuple[slice, slice], device: torch.device) -> torch.Tensor:
    """For each latent of a window, the core latent nearest to it, as a flat index into the core:
    the pixels of the margin count towards the moves beside them."""
    core_rows, core_columns = inner[0].stop - inner[0].start, inner[1].stop - inner[1].start
    row = (torch.arange(rows) - inner[0].start).clamp(0, core_rows - 1)
    column = (torch.arange(columns) - inner[1].start).clamp(0, core_columns - 1)
    return (row[:, None] * core_columns + column[None, :]).flatten().to(device)
