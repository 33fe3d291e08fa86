"""Sampling the residual: a plain function over a respaced schedule.

Each step predicts the clean residual, clamps it to the level's bound and moves to the
next time on the grid with the DDIM update (eta=1 is ancestral, DDPM-like). Stopping early
is always valid, since the prediction at every step is an image. Noise is drawn for the
whole image, step after step, from one seeded generator, so the result does not depend
on how the image is tiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
from torch.nn import functional as F

from diraccodec.diffusion.schedule import RESIDUAL_SCALE, respaced_times, signal_level
from diraccodec.models.residual_unet import ResidualUNet
from diraccodec.models.tiling import apply_tiled


@dataclass(frozen=True)
class SamplerSettings:
    # Measured on Kodak crops with the first trained model: starting at 0.4 with the
    # deterministic DDIM update (eta 0) added the least noise-like grain (docs/diffusion.md).
    start_time: float = 0.4
    # The grid's last time. Ending at 0.1 rather than 0 spares the model repeated corrections
    # at near-clean times: on training photos 20 steps then beat 5 at levels 1, 4 and 7, and
    # beat 20 steps ending at 0 (docs/diffusion.md).
    end_time: float = 0.1
    eta: float = 0.0
    # Bound on the predicted residual (pixel units) at level 1 and at the top level; levels
    # in between interpolate linearly. Coarse levels need room for more detail.
    bound_low_level: float = 0.5
    bound_high_level: float = 0.15
    # Fresh noise at every step (x_next = sqrt(a) x0 + sqrt(1 - a) z) instead of the DDIM
    # update's reuse of the implied noise: what a model trained on its own predictions expects.
    renoise: bool = False
    tile: int = 768  # Kodak-sized images (768x512) in one pass; larger ones in tiles
    margin: int = 96  # beyond the U-Net's receptive field, so tiles leave no seam


def residual_bound(level: float, max_level: float, settings: SamplerSettings) -> float:
    position = min(max((level - 1) / max(max_level - 1, 1e-9), 0.0), 1.0)
    return settings.bound_low_level + position * (settings.bound_high_level - settings.bound_low_level)


@torch.no_grad()
def sample_residual(
    model: ResidualUNet,
    base: torch.Tensor,
    level: float,
    steps: int,
    seed: int,
    settings: SamplerSettings = SamplerSettings(),
) -> torch.Tensor:
    """base: (1, 3, H, W) in [0, 1] -> the residual to add, same shape, in pixel units."""
    if steps <= 0:
        return torch.zeros_like(base)
    height, width = base.shape[-2:]
    multiple = model.size_multiple
    pad = (0, -width % multiple, 0, -height % multiple)
    base_padded = F.pad(base, pad, mode="replicate")
    generator = torch.Generator().manual_seed(seed)
    times = respaced_times(steps, settings.start_time, settings.end_time)

    def noise() -> torch.Tensor:
        return torch.randn(base_padded.shape, generator=generator, dtype=torch.float32).to(base.device)

    bound = residual_bound(level, model.config.max_level, settings) / RESIDUAL_SCALE
    level_tensor = torch.tensor([float(level)], device=base.device)

    x = noise() * (1 - signal_level(times[0]).item()) ** 0.5
    prediction = torch.zeros_like(x)
    for index in range(steps):
        now, after = times[index], times[index + 1]
        time_tensor = torch.full((1,), float(now), device=base.device)

        def denoise(stacked: torch.Tensor, time_tensor: torch.Tensor = time_tensor) -> torch.Tensor:
            return model(stacked[:, :3], time_tensor, stacked[:, 3:], level_tensor)

        prediction = apply_tiled(denoise, torch.cat([x, base_padded], dim=1), Fraction(1), settings.tile,
                                 settings.margin).clamp(-bound, bound)
        if index == steps - 1:
            break
        a_now, a_after = signal_level(now).item(), signal_level(after).item()
        if settings.renoise:
            x = a_after**0.5 * prediction + (1 - a_after) ** 0.5 * noise()
            continue
        predicted_noise = (x - a_now**0.5 * prediction) / max((1 - a_now) ** 0.5, 1e-8)
        sigma = settings.eta * (((1 - a_after) / (1 - a_now)) * (1 - a_now / a_after)) ** 0.5
        direction = max(1 - a_after - sigma**2, 0.0) ** 0.5
        x = a_after**0.5 * prediction + direction * predicted_noise + sigma * noise()
    return (prediction * RESIDUAL_SCALE)[..., :height, :width]
