"""The encoder's search for cheaper latent symbols (rate-distortion optimised quantisation).

Rounding every latent to the nearest integer is what the analysis transform was trained
to make good, but it ignores what each symbol costs and how the synthesis actually uses
it on this image. The decoder does not care how the symbols were chosen, so the encoder
may move any symbol by one step wherever that lowers the training objective
lambda * 255^2 * MSE + bits on the image itself. The bitstream and the decoder stay the
same; only encoding takes longer.

Each pass predicts the change of every possible move from one gradient of the squared
error (first order), the synthesis' response energy per channel (second order) and the
exact cost under the range coder's tables, applies the most promising quarter of the moves
that pay, and keeps them only if the true objective falls. The hyper-latents stay as the
analysis made them, so every table, and so every price, stays fixed during the search.
Tiles of latents with a margin of context keep the memory bounded for any image size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diraccodec.transforms.networks import LATENT_STRIDE
from diraccodec.transforms.tiling import return_freed_memory

TILE_LATENTS = 32  # searched 32x32 latents at a time ...
MARGIN_LATENTS = 4  # ... seeing the neighbours' symbols (and their pixels) 4 latents around
IMPULSE_GRID = 5  # latents around one impulse: 9 gives the same energies within 1e-5
# The share of the paying moves (best first) tried at once; a rejected set is retried with half
# as many. On training photos (SUN crops, 2 passes) a quarter with 4 retries gains more than a
# half with 5 (BD-rate -3.37% against -2.29%) in less time.
MOVE_FRACTION = 0.25
RETRIES = 4


Progress = Callable[[int, int], None]  # (tiles done, tiles in all)
Pricing = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (symbols, table ids) -> bits of each
Filter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (image, level) -> filtered image


@dataclass
class SearchProblem:
    """One image's search: its pixels, its latents' fixed context and the objective's weights."""

    synthesis: nn.Module
    pixels: torch.Tensor  # (3, H, W) uint8 on the CPU, the image without padding
    mean: torch.Tensor  # (M, h, w) predicted mean of every latent (gain-scaled units)
    inverse_gain: torch.Tensor  # (M, 1, 1)
    table_ids: np.ndarray  # (M, h, w)
    price: Pricing  # the range coder's cost of symbols under their tables
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
    """Symbols (M, h, w) int64 at most as costly as `symbols` under the objective, tile by tile."""
    if passes <= 0:
        return symbols
    symbols = symbols.copy()
    rows, columns = symbols.shape[1:]
    tiles = [(top, left) for top in range(0, rows, TILE_LATENTS) for left in range(0, columns, TILE_LATENTS)]
    for done, (top, left) in enumerate(tiles, 1):
        core = (slice(top, min(top + TILE_LATENTS, rows)), slice(left, min(left + TILE_LATENTS, columns)))
        _search_tile(problem, symbols, core, passes)
        return_freed_memory()
        if progress is not None:
            progress(done, len(tiles))
    return symbols


def _best_moves(
    problem: SearchProblem, gradient: torch.Tensor, values: np.ndarray, bits: Callable[[np.ndarray], np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each symbol's best single move (-1, 0 or +1) and the objective's predicted change."""
    best_change = torch.zeros_like(gradient)
    best_move = torch.zeros_like(gradient)
    for move in (-1, 1):
        predicted = problem.distortion_weight * (gradient * move + problem.energy * move * move)
        predicted = predicted + torch.from_numpy(bits(values + move) - bits(values)).float().to(gradient.device)
        better = predicted < best_change
        best_change = torch.where(better, predicted, best_change)
        best_move = torch.where(better, torch.full_like(best_move, move), best_move)
    return best_change, best_move


def _window(core: slice, length: int) -> tuple[int, int]:
    """The core with its margin, shifted inwards at the image's edges so that every window
    has the same size: the allocator then reuses one tile's blocks instead of fragmenting
    (clipped windows of varied sizes made the peak grow by 430 bytes per pixel, 0.6 against
    2.4 MP; these by about 50)."""
    size = min(TILE_LATENTS + 2 * MARGIN_LATENTS, length)
    start = min(max(core.start - MARGIN_LATENTS, 0), length - size)
    return start, start + size


def _search_tile(problem: SearchProblem, symbols: np.ndarray, core: tuple[slice, slice], passes: int) -> None:
    """Improve symbols[:, core] in place, the tile's margin held fixed as context."""
    top, bottom = _window(core[0], symbols.shape[1])
    left, right = _window(core[1], symbols.shape[2])
    window = (slice(top, bottom), slice(left, right))
    inner = (slice(core[0].start - top, core[0].stop - top), slice(core[1].start - left, core[1].stop - left))
    stride = LATENT_STRIDE
    device = problem.mean.device
    pixels = problem.pixels[:, top * stride : bottom * stride, left * stride : right * stride].to(device).float() / 255
    mean = problem.mean[:, window[0], window[1]]
    table_ids = problem.table_ids[:, core[0], core[1]]

    def squared_error(candidate: torch.Tensor) -> torch.Tensor:
        image = problem.synthesis(problem.prepare(((candidate + mean) * problem.inverse_gain)[None]))
        if problem.restoration is not None:
            image = problem.restoration(image.clamp(0, 1), problem.level)
        image = image[0].float()
        return (image[:, : pixels.shape[1], : pixels.shape[2]] - pixels).pow(2).sum()

    def bits(values: np.ndarray) -> np.ndarray:
        return problem.price(values, table_ids)

    current = torch.from_numpy(symbols[:, window[0], window[1]]).float().to(device)
    with torch.no_grad(), problem.precision():
        objective = problem.distortion_weight * squared_error(current).item() + bits(symbols[:, core[0], core[1]]).sum()
    for _ in range(passes):
        candidate = current.clone().requires_grad_(True)
        with problem.precision():
            error = squared_error(candidate)
        (gradient,) = torch.autograd.grad(error, candidate)  # not the weights'
        gradient = gradient[:, inner[0], inner[1]].float()
        values = current[:, inner[0], inner[1]].cpu().numpy().astype(np.int64)
        best_change, best_move = _best_moves(problem, gradient, values, bits)
        paying = best_change < 0
        fraction = MOVE_FRACTION
        for _ in range(RETRIES + 1):
            if not paying.any():
                return
            threshold = torch.quantile(best_change[paying], fraction) if paying.sum() > 1 else 0.0
            chosen = paying & (best_change <= threshold)
            trial = current.clone()
            trial[:, inner[0], inner[1]] += best_move * chosen
            trial_values = trial[:, inner[0], inner[1]].cpu().numpy().astype(np.int64)
            with torch.no_grad(), problem.precision():
                trial_objective = problem.distortion_weight * squared_error(trial).item() + bits(trial_values).sum()
            if trial_objective < objective:
                current, objective = trial, trial_objective
                symbols[:, core[0], core[1]] = trial_values
                break
            fraction /= 2
        else:
            return
