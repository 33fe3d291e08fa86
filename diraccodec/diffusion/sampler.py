"""Sampling the residual: a plain function over a respaced schedule.

Each step predicts the clean residual, clamps it to the level's bound and moves to the
next time on the grid with the DDIM update (eta=1 is ancestral, DDPM-like). Stopping early
is always valid, since the prediction at every step is an image. Noise is drawn for the
whole image, step after step, from one seeded generator, so the result does not depend
on how the image is tiled.

The output is the last prediction, its smooth part and its fine detail (the prediction minus
its Gaussian blur) each amplified by a per-level gain, plus a per-level share of the noise
that the grid's end time still carries (share 1 is the sampler's own state there). These
finishing touches were chosen on training photos for the shipped model: the model adds too
little fine texture on its own, and LPIPS prefers a little grain to a smooth image. Before
them the finishing can take out the lattice that the U-Net's sub-pixel upsampling leaves,
locked to its 8-pixel grid, which the detail gain would otherwise amplify (lattice_period).

Where the file carries the encoder's detail map and the level uses one (detail_match), the
finished residual's fine detail is then scaled, block by block, towards the original's
(detail_map.py): the model cannot see in a blurry base where the texture was.

With full_steps set, fewer steps apply only a share of the finishing, steps / full_steps: the
output mixes the plain last prediction and its finished form. The shipped model reaches its
best prediction in one or two steps, so without this the first step would take all of the
way from fidelity to realism and `--steps` would be a switch, not a knob (docs/diffusion.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import torch
from torch.nn import functional as F

from diraccodec.diffusion.detail_map import DetailMap, match_detail
from diraccodec.diffusion.schedule import RESIDUAL_SCALE, respaced_times, signal_level
from diraccodec.restoration.unet import ResidualUNet
from diraccodec.transforms.layers import gaussian_window, periodic_component, separable_blur
from diraccodec.transforms.tiling import apply_tiled


@dataclass(frozen=True)
class SamplerSettings:
    # Measured on Kodak crops with the first trained model: starting at 0.4 with the
    # deterministic DDIM update (eta 0) added the least noise-like grain (docs/diffusion.md).
    start_time: float = 0.4
    # The grid's last time. Ending at 0.1 rather than 0 spares the model repeated corrections
    # at near-clean times: on training photos 20 steps then beat 5 at levels 1, 4 and 7, and
    # beat 20 steps ending at 0 (docs/diffusion.md).
    end_time: float = 0.1
    # The grid's spacing at levels 1, 2, 3, ... (linear in between, the last one beyond): 1 is
    # even steps; below 1, short steps at the noisy start that grow towards the end
    # (respaced_times). Chosen on training photos: at level 1, 0.4 beat the even grid at 20
    # steps, with the same finishing (docs/diffusion.md).
    grid_power: tuple[float, ...] = (1.0,)
    eta: float = 0.0
    # Bound on the predicted residual (pixel units) at level 1 and at the top level; levels
    # in between interpolate linearly. Coarse levels need room for more detail.
    bound_low_level: float = 0.5
    bound_high_level: float = 0.15
    # Fresh noise at every step (x_next = sqrt(a) x0 + sqrt(1 - a) z) instead of the DDIM
    # update's reuse of the implied noise: what a model trained on its own predictions expects.
    renoise: bool = False
    # Values at levels 1, 2, 3, ... (linear in between, the last one beyond): the gain on the
    # predicted residual (on its smooth part where detail_gain is given, else on all of it),
    # the gain on its detail finer than detail_sigma pixels, and the share of the noise left
    # at the grid's end kept in the output. (1.0,), None and (0.0,) give the plain last
    # prediction, as files from before session 11 expect; files from session 11 have no
    # detail_gain, so one gain acts on all of the prediction.
    residual_gain: tuple[float, ...] = (1.0,)
    kept_noise: tuple[float, ...] = (0.0,)
    detail_gain: tuple[float, ...] | None = None
    detail_sigma: float = 1.0
    # The period (pixels) of the grid-locked lattice taken out of the last prediction before
    # the gains (0: none, as files before session 13 expect), measured over a Gaussian of
    # lattice_cells periods.
    lattice_period: int = 0
    lattice_cells: float = 2.0
    # The step count from which the finishing applies in full; below it, the share
    # steps / full_steps of it (0: in full at any count, as files before session 15 expect).
    full_steps: int = 0
    # At levels 1, 2, 3, ...: the share of the encoder's detail map (the RMS of the original's
    # fine detail, block by block) that the finished residual's fine detail is scaled to, the
    # scale kept within detail_match_bounds (0: the map is not used, nor written by the encoder,
    # as files before session 17 expect). Each value holds from its level up to the next, not
    # interpolated: a small share takes detail away rather than steering it. See detail_map.py.
    detail_match: tuple[float, ...] = (0.0,)
    detail_match_bounds: tuple[float, float] = (0.4, 2.5)
    tile: int = 768  # Kodak-sized images (768x512) in one pass; larger ones in tiles
    margin: int = 96  # at least; more where the U-Net's receptive field is wider, so tiles leave no seam

    def __post_init__(self) -> None:  # JSON gives lists; keep the settings hashable
        object.__setattr__(self, "residual_gain", tuple(float(v) for v in self.residual_gain))
        object.__setattr__(self, "kept_noise", tuple(float(v) for v in self.kept_noise))
        object.__setattr__(self, "grid_power", tuple(float(v) for v in self.grid_power))
        object.__setattr__(self, "detail_match", tuple(float(v) for v in self.detail_match))
        object.__setattr__(self, "detail_match_bounds", tuple(float(v) for v in self.detail_match_bounds))
        low, high = self.detail_match_bounds
        if not (min(self.detail_match) >= 0 and 0 < low <= 1 <= high):
            raise ValueError(f"detail_match values must be >= 0 and its bounds enclose 1, not "
                             f"{self.detail_match} within {self.detail_match_bounds}")
        if not all(power > 0 for power in self.grid_power):
            raise ValueError(f"grid_power values must be positive, not {self.grid_power}")
        if self.detail_gain is not None:
            object.__setattr__(self, "detail_gain", tuple(float(v) for v in self.detail_gain))
        if not self.detail_sigma > 0:  # a weights file read as settings: the loader names the file
            raise ValueError(f"detail_sigma must be positive, not {self.detail_sigma}")
        if not (isinstance(self.lattice_period, int) and self.lattice_period >= 0 and self.lattice_cells > 0):
            raise ValueError(f"lattice_period must be a whole number >= 0 and lattice_cells positive, not "
                             f"{self.lattice_period} and {self.lattice_cells}")
        if not (isinstance(self.full_steps, int) and self.full_steps >= 0):
            raise ValueError(f"full_steps must be a whole number >= 0, not {self.full_steps}")

    def finishing(self, level: float, steps: int | None = None) -> Finishing:
        """The finishing touches at this level after `steps` steps (None: in full)."""
        gain = per_level(self.residual_gain, level)
        detail = gain if self.detail_gain is None else per_level(self.detail_gain, level)
        full = Finishing(gain, detail, per_level(self.kept_noise, level), self.detail_sigma, self.lattice_period,
                         self.lattice_cells, held_level(self.detail_match, level), self.detail_match_bounds)
        return full if steps is None else full.share(self.finishing_share(steps))

    def finishing_share(self, steps: int) -> float:
        """How much of the finishing `steps` steps apply."""
        return 1.0 if self.full_steps <= 0 else min(max(steps, 0) / self.full_steps, 1.0)


def per_level(values: tuple[float, ...], level: float) -> float:
    """The value at a (possibly fractional) level from values at levels 1, 2, 3, ..."""
    position = min(max(level - 1, 0.0), len(values) - 1)
    below = int(position)
    above = min(below + 1, len(values) - 1)
    return values[below] + (position - below) * (values[above] - values[below])


def held_level(values: tuple[float, ...], level: float) -> float:
    """The value of the whole level at or below `level`, from values at levels 1, 2, 3, ..."""
    return values[min(max(math.floor(level) - 1, 0), len(values) - 1)]


@dataclass(frozen=True)
class Finishing:
    """What becomes of the last prediction and of the noise left, at one level."""

    gain: float = 1.0  # on the prediction's smooth part (all of it where detail_gain equals it)
    detail_gain: float = 1.0  # on the prediction minus its blur
    kept_noise: float = 0.0
    detail_sigma: float = 1.0  # of the Gaussian blur that splits smooth part from detail
    lattice_period: int = 0  # of the grid-locked lattice taken out first (0: none)
    lattice_cells: float = 2.0  # periods over which the lattice is measured
    detail_match: float = 0.0  # share of the detail map's RMS the fine detail is scaled to (0: none)
    detail_match_bounds: tuple[float, float] = (0.4, 2.5)  # on that scale
    match_share: float = 1.0  # the power the scale is raised to: below 1, part of the matching

    def share(self, share: float) -> Finishing:
        """This share of the finishing: its output mixes the plain prediction (share 0) and this
        finishing's (share 1). The lattice, an artefact, comes out whatever the share."""
        if share >= 1.0:
            return self
        return replace(self, gain=1 + share * (self.gain - 1), detail_gain=1 + share * (self.detail_gain - 1),
                       kept_noise=share * self.kept_noise, match_share=share * self.match_share)


@dataclass(frozen=True)
class SampledResidual:
    """What sampling leaves, in pixel units: the last prediction of the clean residual and the
    noise the grid's end time still carries (zero when the grid ends at 0)."""

    prediction: torch.Tensor
    noise_left: torch.Tensor

    def finished(self, finishing: Finishing, detail_map: DetailMap | None = None) -> torch.Tensor:
        """The finishing applied; with the encoder's detail map where the level uses one."""
        # the whole image's prediction, after tiling, so neither filter shows seams
        prediction = self.prediction
        if finishing.lattice_period:
            prediction = prediction - periodic_component(prediction, finishing.lattice_period, finishing.lattice_cells)
        residual = finishing.gain * prediction
        if finishing.detail_gain != finishing.gain:
            radius = math.ceil(3 * finishing.detail_sigma)
            smooth = separable_blur(prediction, gaussian_window(finishing.detail_sigma, radius), pad=True)
            residual += (finishing.detail_gain - finishing.gain) * (prediction - smooth)
        residual = residual + finishing.kept_noise * self.noise_left
        if detail_map is None or finishing.detail_match <= 0:
            return residual
        return match_detail(residual, detail_map, finishing.detail_match, finishing.detail_match_bounds,
                            finishing.match_share)


def residual_bound(level: float, max_level: float, settings: SamplerSettings) -> float:
    position = min(max((level - 1) / max(max_level - 1, 1e-9), 0.0), 1.0)
    return settings.bound_low_level + position * (settings.bound_high_level - settings.bound_low_level)


def sample_residual(
    model: ResidualUNet,
    base: torch.Tensor,
    level: float,
    steps: int,
    seed: int,
    settings: SamplerSettings = SamplerSettings(),
    detail_map: DetailMap | None = None,
) -> torch.Tensor:
    """base: (1, 3, H, W) in [0, 1] -> the residual to add, same shape, in pixel units."""
    if steps <= 0:
        return torch.zeros_like(base)
    sampled = sample_residual_parts(model, base, level, steps, seed, settings)
    return sampled.finished(settings.finishing(level, steps), detail_map)


@torch.no_grad()
def sample_residual_parts(
    model: ResidualUNet, base: torch.Tensor, level: float, steps: int, seed: int, settings: SamplerSettings
) -> SampledResidual:
    """The sampling itself (steps >= 1), before the finishing gain and kept noise."""
    height, width = base.shape[-2:]
    multiple = model.size_multiple
    pad = (0, -width % multiple, 0, -height % multiple)
    base_padded = F.pad(base, pad, mode="replicate")
    generator = torch.Generator().manual_seed(seed)
    times = respaced_times(steps, settings.start_time, settings.end_time, per_level(settings.grid_power, level))

    def noise() -> torch.Tensor:
        return torch.randn(base_padded.shape, generator=generator, dtype=torch.float32).to(base.device)

    bound = residual_bound(level, model.config.max_level, settings) / RESIDUAL_SCALE
    level_tensor = torch.tensor([float(level)], device=base.device)
    margin = model.tile_margin(settings.margin)

    x = noise() * (1 - signal_level(times[0]).item()) ** 0.5
    prediction = predicted_noise = torch.zeros_like(x)
    for index in range(steps):
        now, after = times[index], times[index + 1]
        time_tensor = torch.full((1,), float(now), device=base.device)

        def denoise(stacked: torch.Tensor, time_tensor: torch.Tensor = time_tensor) -> torch.Tensor:
            return model(stacked[:, :3], time_tensor, stacked[:, 3:], level_tensor)

        prediction = apply_tiled(denoise, torch.cat([x, base_padded], dim=1), Fraction(1), settings.tile,
                                 margin).clamp(-bound, bound)
        a_now, a_after = signal_level(now).item(), signal_level(after).item()
        predicted_noise = (x - a_now**0.5 * prediction) / max((1 - a_now) ** 0.5, 1e-8)
        if index == steps - 1:
            break
        if settings.renoise:
            x = a_after**0.5 * prediction + (1 - a_after) ** 0.5 * noise()
            continue
        sigma = settings.eta * (((1 - a_after) / (1 - a_now)) * (1 - a_now / a_after)) ** 0.5
        direction = max(1 - a_after - sigma**2, 0.0) ** 0.5
        x = a_after**0.5 * prediction + direction * predicted_noise + sigma * noise()
    # x at the end time over sqrt(a): the prediction plus this much of the implied noise
    end_level = signal_level(times[-1]).item()
    noise_left = predicted_noise * ((1 - end_level) / end_level) ** 0.5

    def crop(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor * RESIDUAL_SCALE)[..., :height, :width]

    return SampledResidual(crop(prediction), crop(noise_left))
