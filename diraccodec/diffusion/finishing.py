"""The finishing: what becomes of the sampler's last prediction before it is added to the image.

The shipped model adds too little fine texture on its own, and LPIPS prefers a little grain
to a smooth image, so per level the finishing amplifies the prediction's smooth part and its
fine detail (the prediction minus its Gaussian blur) by their own gains, and keeps a share
of the noise that the grid's end time still carries. Before the gains it can take out the
lattice that the U-Net's sub-pixel upsampling leaves, locked to its 8-pixel grid, which the
detail gain would otherwise amplify. Where the file carries the encoder's detail map and the
level uses one, the finished residual's fine detail is then scaled, block by block, towards
the original's (detail_map.py). Below `full_steps` steps only the share steps / full_steps of
the finishing applies, so that `--steps` works as a knob rather than a switch. Values given
per level hold at levels 1, 2, 3, ... (linear in between, the last one beyond), except the
detail map's share, which holds from its level up to the next.

These are hand-set touches chosen on training photos for the shipped model; a model trained
to need none would ship with the plain finishing (every gain 1, nothing kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from diraccodec.codec.hyperprior import ladder_position
from diraccodec.diffusion.detail_map import DetailMap, Emit, match_detail_in_bands
from diraccodec.diffusion.sampler import SampledResidual, SamplerSettings
from diraccodec.diffusion.schedule import held_level, per_level
from diraccodec.image.filters import blur_radius, gaussian_blur, periodic_component, periodic_reach
from diraccodec.transforms.tiling import spans


@dataclass(frozen=True)
class Finishing:
    """The finishing at one level and step count."""

    gain: float = 1.0  # on the prediction's smooth part (all of it where detail_gain equals it)
    detail_gain: float = 1.0  # on the prediction minus its blur
    kept_noise: float = 0.0
    detail_sigma: float = 1.0  # of the Gaussian blur that splits smooth part from detail
    lattice_period: int = 0  # of the grid-locked lattice taken out first (0: none)
    lattice_cells: float = 2.0  # periods over which the lattice is measured
    detail_match: float = 0.0  # share of the detail map's RMS the fine detail is scaled to (0: none)
    detail_match_bounds: tuple[float, float] = (0.4, 2.5)  # on that scale
    match_share: float = 1.0  # the power the scale is raised to: below 1, part of the matching

    def in_share(self, share: float) -> Finishing:
        """This share of the finishing: its output mixes the plain prediction (share 0) and this
        finishing's (share 1). The lattice, an artefact, comes out whatever the share."""
        if share >= 1.0:
            return self
        return replace(self, gain=1 + share * (self.gain - 1), detail_gain=1 + share * (self.detail_gain - 1),
                       kept_noise=share * self.kept_noise, match_share=share * self.match_share)


@dataclass(frozen=True)
class FinishingSettings:
    """The finishing of every level, as a diffusion weights file stores it. The defaults are the
    plain finishing: the last prediction as it is."""

    residual_gain: tuple[float, ...] = (1.0,)
    kept_noise: tuple[float, ...] = (0.0,)
    detail_gain: tuple[float, ...] | None = None  # None: residual_gain acts on all of the prediction
    detail_sigma: float = 1.0
    lattice_period: int = 0
    lattice_cells: float = 2.0
    full_steps: int = 0  # the step count from which the finishing applies in full (0: at any count)
    detail_match: tuple[float, ...] = (0.0,)
    detail_match_bounds: tuple[float, float] = (0.4, 2.5)

    def __post_init__(self) -> None:  # JSON gives lists; keep the settings hashable
        for name in ("residual_gain", "kept_noise", "detail_match", "detail_match_bounds"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.detail_gain is not None:
            object.__setattr__(self, "detail_gain", tuple(float(v) for v in self.detail_gain))
        low, high = self.detail_match_bounds
        if not (min(self.detail_match) >= 0 and 0 < low <= 1 <= high):
            raise ValueError(f"detail_match values must be >= 0 and its bounds enclose 1, not "
                             f"{self.detail_match} within {self.detail_match_bounds}")
        if not self.detail_sigma > 0:  # a weights file read as settings: the loader names the file
            raise ValueError(f"detail_sigma must be positive, not {self.detail_sigma}")
        if not (isinstance(self.lattice_period, int) and self.lattice_period >= 0 and self.lattice_cells > 0):
            raise ValueError(f"lattice_period must be a whole number >= 0 and lattice_cells positive, not "
                             f"{self.lattice_period} and {self.lattice_cells}")
        if not (isinstance(self.full_steps, int) and self.full_steps >= 0):
            raise ValueError(f"full_steps must be a whole number >= 0, not {self.full_steps}")

    @classmethod
    def field_names(cls) -> set[str]:
        return {field.name for field in fields(cls)}

    def at(self, level: float, steps: int | None = None) -> Finishing:
        """The finishing at this level after `steps` steps (None: in full)."""
        gain = per_level(self.residual_gain, level)
        detail = gain if self.detail_gain is None else per_level(self.detail_gain, level)
        full = Finishing(gain, detail, per_level(self.kept_noise, level), self.detail_sigma, self.lattice_period,
                         self.lattice_cells, held_level(self.detail_match, level), self.detail_match_bounds)
        return full if steps is None else full.in_share(self.share_at(steps))

    def share_at(self, steps: int) -> float:
        """How much of the finishing `steps` steps apply."""
        return 1.0 if self.full_steps <= 0 else min(max(steps, 0) / self.full_steps, 1.0)


def settings_on_ladder(
    sampler: SamplerSettings, finishing: FinishingSettings, chosen_for: Sequence[float], ladder: Sequence[float]
) -> tuple[SamplerSettings, FinishingSettings]:
    """Per-level settings chosen for the base ladder `chosen_for`, carried to the ladder `ladder`
    (the same lambdas give back the same settings at every level). Each new level takes the
    settings of the level where its lambda falls on the old ladder; beyond the old ends it takes
    the end's, as hand-set values are not extrapolated. The residual bound, linear from level 1
    to the top, takes the old bounds at the new ends."""
    top = len(chosen_for)
    positions = [min(max(ladder_position(chosen_for, value), 1.0), float(top)) for value in ladder]

    def carried(values: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(per_level(values, position) for position in positions)

    sampler = replace(sampler, grid_power=carried(sampler.grid_power),
                      bound_low_level=sampler.bound(positions[0], top),
                      bound_high_level=sampler.bound(positions[-1], top))
    finishing = replace(
        finishing, residual_gain=carried(finishing.residual_gain), kept_noise=carried(finishing.kept_noise),
        detail_gain=None if finishing.detail_gain is None else carried(finishing.detail_gain),
        detail_match=tuple(held_level(finishing.detail_match, position) for position in positions))
    return sampler, finishing


def finish(sampled: SampledResidual, finishing: Finishing, detail_map: DetailMap | None = None) -> torch.Tensor:
    """The residual to add: `finishing` applied to the whole image's prediction (after tiling,
    so neither filter shows seams), with the encoder's detail map where the level uses one."""
    rows: list[torch.Tensor] = []
    finish_in_bands(sampled, finishing, detail_map, lambda first, end, residual: rows.append(residual),
                    band_pixels=sampled.prediction[0, 0].numel())
    return torch.cat(rows, dim=-2)


def finish_in_bands(sampled: SampledResidual, finishing: Finishing, detail_map: DetailMap | None, emit: Emit,
                    band_pixels: int, consume: bool = False) -> None:
    """`finish` by bands of about `band_pixels` pixels, each handed to `emit(first row, end
    row, residual)` in order: the same values, with one band's working set rather than the
    several image-sized ones that filtering the whole image takes. Each band reads the
    prediction over a margin as wide as the filters reach. Where the detail map applies, the
    residual waits for it in an image-sized store: with consume=True, sampled.noise_left's
    own (its noise is added by then), which leaves `sampled` spent."""
    prediction, noise_left = sampled.prediction, sampled.noise_left
    height, width = prediction.shape[-2:]
    matched = detail_map if detail_map is not None and finishing.detail_match > 0 else None
    # bands start on the lattice's grid and, where the map applies, on its blocks
    align = math.lcm(finishing.lattice_period or 1, matched.block if matched is not None else 1)
    rows = _round_up(max(band_pixels // width, 1), align)
    store = None if matched is None else noise_left if consume else torch.empty_like(noise_left)
    for (top, bottom), (above, below) in spans(height, rows, _round_up(reach(finishing), align)):
        filtered = _filtered(prediction[..., above:below, :], finishing)[..., top - above : bottom - above, :]
        residual = filtered + finishing.kept_noise * noise_left[..., top:bottom, :]
        if store is None:
            emit(top, bottom, residual)
        else:
            store[..., top:bottom, :] = residual
    if matched is not None and store is not None:
        match_detail_in_bands(store, matched, finishing.detail_match, finishing.detail_match_bounds,
                              finishing.match_share, rows, emit)


def _filtered(prediction: torch.Tensor, finishing: Finishing) -> torch.Tensor:
    """The finishing's filters on the prediction: lattice out, then the smooth part and the fine
    detail each by its gain."""
    if finishing.lattice_period:
        prediction = prediction - periodic_component(prediction, finishing.lattice_period, finishing.lattice_cells)
    residual = finishing.gain * prediction
    if finishing.detail_gain != finishing.gain:
        residual += (finishing.detail_gain - finishing.gain) * (prediction - gaussian_blur(prediction,
                                                                                          finishing.detail_sigma))
    return residual


def reach(finishing: Finishing) -> int:
    """The rows either side of a band that its filtered prediction depends on (bands on the
    lattice's grid): the detail blur's, widened to whole periods where the lattice comes out
    first, since the rows it reads lie in the next cells out, then the lattice's reach."""
    blur = blur_radius(finishing.detail_sigma) if finishing.detail_gain != finishing.gain else 0
    period = finishing.lattice_period
    if not period:
        return blur
    return _round_up(blur, period) + periodic_reach(period, finishing.lattice_cells)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
