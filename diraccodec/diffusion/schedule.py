"""The noise schedule over the (scaled) residual, and its respacing to a few steps.

Time runs from 0 (clean) to 1 (pure noise) with a cosine schedule of the signal level,
x_t = sqrt(a(t)) r + sqrt(1 - a(t)) noise. The residual x - x_base is small, so sampling
starts late, at `start_time`, where the noise already dwarfs any residual, from the base
image itself (a residual of zero) plus noise.
"""

from __future__ import annotations

import math

import torch

COSINE_OFFSET = 0.008


def signal_level(time: torch.Tensor) -> torch.Tensor:
    """a(t): the fraction of variance that is signal at time t (1 at t=0, ~0 at t=1)."""
    angle = (time + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2
    start = math.cos(COSINE_OFFSET / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return (torch.cos(angle) ** 2 / start).clamp(1e-5, 1.0)


def respaced_times(steps: int, start_time: float, end_time: float = 0.0, power: float = 1.0) -> torch.Tensor:
    """steps + 1 times from start_time down to end_time: the sampler's grid.

    The model predicts at the first `steps` of them; an end above 0 keeps the last
    predictions away from the near-clean times where repeated corrections pile up. Power 1
    spaces them evenly; below 1 the steps are short at the noisy start and grow towards the
    end, so the last prediction comes at a noisier time (end + (start - end) / steps**power)
    after many small steps where the model settles the image's structure.
    """
    if power == 1.0:  # exactly the even grid of the files that state no power
        return torch.linspace(start_time, end_time, steps + 1, dtype=torch.float64)
    progress = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return end_time + (start_time - end_time) * (1 - progress) ** power


def per_level(values: tuple[float, ...], level: float) -> float:
    """The value at a (possibly fractional) level from values at levels 1, 2, 3, ... (linear in
    between, the last one beyond)."""
    position = min(max(level - 1, 0.0), len(values) - 1)
    below = int(position)
    above = min(below + 1, len(values) - 1)
    return values[below] + (position - below) * (values[above] - values[below])


def held_level(values: tuple[float, ...], level: float) -> float:
    """The value of the whole level at or below `level`, from values at levels 1, 2, 3, ..."""
    return values[min(max(math.floor(level) - 1, 0), len(values) - 1)]
