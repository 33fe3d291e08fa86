"""Sampling the residual: a plain function over a respaced schedule.

Each step predicts the clean residual, clamps it to the level's bound and moves to the next
time on the grid with the DDIM update (eta=1 is ancestral, DDPM-like). Stopping early is
always valid, since the prediction at every step is an image. Noise comes from a
counter-based generator (noise.py) for the whole image, so the result depends neither on
the device nor on how the U-Net is tiled. The deterministic update (eta 0, the shipped
setting) draws noise once, for the start.

What sampling returns is the last prediction and the noise the grid's end time still
carries; finishing.py makes the residual to add from them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields
from fractions import Fraction

import torch

from diraccodec.compute import Compute, GraphReplay
from diraccodec.diffusion.noise import gaussian_noise
from diraccodec.diffusion.schedule import per_level, respaced_times, signal_level
from diraccodec.options import Progress
from diraccodec.restoration.unet import RESIDUAL_SCALE, UNET_MARGIN, UNET_TILE, ResidualUNet
from diraccodec.transforms.tiling import apply_tiled, replicate_padded

# (noisy residual, time) -> clean prediction; the sampler later writes over the noisy residual
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
NoiseSource = Callable[[], torch.Tensor]  # the next draw of standard normal noise


@dataclass(frozen=True)
class SamplerSettings:
    """The schedule and the sampler's update, as a diffusion weights file stores them."""

    # Where sampling starts: at 0.4 with the deterministic update the least noise-like grain
    # is added (measured on training-photo crops).
    start_time: float = 0.4
    # The grid's last time. Ending at 0.1 rather than 0 spares the model repeated corrections
    # at near-clean times: on training photos 20 steps then beat 5, and beat 20 ending at 0.
    end_time: float = 0.1
    # The grid's spacing at levels 1, 2, 3, ... (linear in between, the last one beyond): 1 is
    # even steps; below 1, short steps at the noisy start that grow towards the end.
    grid_power: tuple[float, ...] = (1.0,)
    eta: float = 0.0
    # Bound on the predicted residual (pixel units) at level 1 and at the top level; levels
    # in between interpolate linearly. Coarse levels need room for more detail.
    bound_low_level: float = 0.5
    bound_high_level: float = 0.15
    # Fresh noise at every step (x_next = sqrt(a) x0 + sqrt(1 - a) z) instead of the DDIM
    # update's reuse of the implied noise: what a model trained on its own predictions expects.
    renoise: bool = False
    # The U-Net's tile on a CPU and its least margin (restoration.unet). Runtime choices: the
    # values a weights file stores are not read (modelfiles.split_settings).
    tile: int = UNET_TILE
    margin: int = UNET_MARGIN

    def __post_init__(self) -> None:  # JSON gives lists; keep the settings hashable
        object.__setattr__(self, "grid_power", tuple(float(v) for v in self.grid_power))
        if not all(power > 0 for power in self.grid_power):
            raise ValueError(f"grid_power values must be positive, not {self.grid_power}")

    @classmethod
    def field_names(cls) -> set[str]:
        return {field.name for field in fields(cls)}

    def times(self, level: float, steps: int) -> torch.Tensor:
        return respaced_times(steps, self.start_time, self.end_time, per_level(self.grid_power, level))

    def bound(self, level: float, max_level: float) -> float:
        """The bound on the predicted residual at this level, in pixel units."""
        position = min(max((level - 1) / max(max_level - 1, 1e-9), 0.0), 1.0)
        return self.bound_low_level + position * (self.bound_high_level - self.bound_low_level)


@dataclass(frozen=True)
class SampledResidual:
    """What sampling leaves, in pixel units: the last prediction of the clean residual and the
    noise the grid's end time still carries (zero when the grid ends at 0)."""

    prediction: torch.Tensor
    noise_left: torch.Tensor


def sample_ddim(denoise: Denoiser, times: torch.Tensor, noise: NoiseSource, eta: float = 0.0,
                renoise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDIM sampler over `times` (start to end, one more than the steps), from the residual 0.

    Returns the last prediction and the noise it implies at the grid's end time, scaled as the
    state there carries it (x_end / sqrt(a) = prediction + that)."""

    def estimate(x: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction at time `index` and the noise it implies in x."""
        prediction = denoise(x, float(times[index]))
        a_now = signal_level(times[index]).item()
        implied = prediction * a_now**0.5
        return prediction, torch.sub(x, implied, out=implied).div_(max((1 - a_now) ** 0.5, 1e-8))

    steps = len(times) - 1
    if steps < 1:
        raise ValueError("sampling takes at least one step")
    x = noise() * (1 - signal_level(times[0]).item()) ** 0.5
    for index in range(steps - 1):
        # one call, so that this step's prediction is freed before the next network pass
        x = _next_state(x, *estimate(x, index), signal_level(times[index]).item(),
                        signal_level(times[index + 1]).item(), eta, renoise, noise)
    prediction, predicted_noise = estimate(x, steps - 1)
    end_level = signal_level(times[-1]).item()
    return prediction, predicted_noise.mul_(((1 - end_level) / end_level) ** 0.5)


def _next_state(x: torch.Tensor, prediction: torch.Tensor, predicted_noise: torch.Tensor, a_now: float,
                a_after: float, eta: float, renoise: bool, noise: NoiseSource) -> torch.Tensor:
    """The state at the next time, written over x and the implied noise, which the sampler
    needs no more: on a large image its few image-sized tensors are most of the memory."""
    if renoise:
        return torch.mul(prediction, a_after**0.5, out=x).add_(noise().mul_((1 - a_after) ** 0.5))
    sigma = eta * (((1 - a_after) / (1 - a_now)) * (1 - a_now / a_after)) ** 0.5
    direction = max(1 - a_after - sigma**2, 0.0) ** 0.5
    x = torch.mul(prediction, a_after**0.5, out=x).add_(predicted_noise.mul_(direction))
    return x.add_(noise().mul_(sigma)) if sigma > 0 else x


def _network_pass(model: ResidualUNet, compute: Compute, stacked: torch.Tensor, time: torch.Tensor,
                  level: torch.Tensor) -> torch.Tensor:
    """One pass of the U-Net over a tile: the noisy residual and the base, stacked."""
    with compute.autocast():
        return model(stacked[:, :3], time, stacked[:, 3:], level).float()


# Each model's replayed step per compute, kept as long as the model: its CUDA graphs then serve
# every later decode, which would otherwise capture them again (two warm-up passes and a capture)
_REPLAYED_STEPS: weakref.WeakKeyDictionary[ResidualUNet, dict[Compute, Callable[..., torch.Tensor]]] = \
    weakref.WeakKeyDictionary()


def step_network(model: ResidualUNet, compute: Compute) -> Callable[..., torch.Tensor]:
    """(stacked, time, level) -> the U-Net's prediction, replayed from CUDA graphs where
    `compute` uses them (kept with the model), else run as it is."""
    if not compute.uses_graphs:
        return lambda *inputs: _network_pass(model, compute, *inputs)
    replayed = _REPLAYED_STEPS.setdefault(model, {})
    if compute not in replayed:
        held = weakref.ref(model)  # the cache's value must not keep its key alive
        replayed[compute] = compute.replayed(lambda *inputs: _network_pass(held(), compute, *inputs))
    return replayed[compute]


def sample_residual(model: ResidualUNet, base: torch.Tensor, level: float, steps: int, seed: int,
                    settings: SamplerSettings = SamplerSettings(), compute: Compute = Compute(),
                    progress: Progress | None = None) -> SampledResidual:
    """base: (1, 3, H, W) on compute's device, 8-bit pixels or floats in [0, 1] -> the
    sampling's parts (steps >= 1).

    The U-Net runs in tiles where the image is larger than the device's tile, in the mode's
    precision; the sampler's own arithmetic stays float32. An 8-bit base stays 8-bit but for
    the tile at hand (a float one would take 12 bytes a pixel). `progress(done, steps)`
    hears of each finished step."""
    height, width = base.shape[-2:]
    device, multiple, eight_bit = base.device, model.size_multiple, base.dtype == torch.uint8
    if not (eight_bit or base.is_floating_point()):
        raise ValueError(f"the base must be 8-bit pixels or floats in [0, 1], not {base.dtype}")
    base = replicate_padded(base, height + -height % multiple, width + -width % multiple)
    bound = settings.bound(level, model.config.max_level) / RESIDUAL_SCALE
    level_tensor = torch.tensor([float(level)], device=device, dtype=torch.float32)
    margin = model.tile_margin(settings.margin)
    draws = iter(range(1 << 30))

    def noise() -> torch.Tensor:
        return gaussian_noise((1, 3, *base.shape[-2:]), seed, next(draws), device)

    step = step_network(model, compute)  # replayed where the device allows
    finished = iter(range(1, steps + 1))

    def denoise(x: torch.Tensor, time: float) -> torch.Tensor:
        time_tensor = torch.full((1,), time, device=device, dtype=torch.float32)

        def tile(x_tile: torch.Tensor, base_tile: torch.Tensor) -> torch.Tensor:
            # the network's input made once, in the kernels' memory format: no further copies
            stacked = torch.empty((1, 6, *x_tile.shape[-2:]), device=device, memory_format=compute.memory_format)
            stacked[:, :3] = x_tile
            stacked[:, 3:] = base_tile.float().div_(255) if eight_bit else base_tile  # dense, then copied
            return step(stacked, time_tensor, level_tensor)

        with compute.kernels():
            predicted = apply_tiled(tile, (x, base), Fraction(1), compute.tile(settings.tile), margin)
        if progress is not None:
            progress(next(finished), steps)
        return predicted.contiguous().clamp_(-bound, bound)

    def crop(tensor: torch.Tensor) -> torch.Tensor:  # in place: both are the sampling's own
        return tensor.mul_(RESIDUAL_SCALE)[..., :height, :width]

    try:
        with torch.no_grad():
            prediction, noise_left = sample_ddim(denoise, settings.times(level, steps), noise, settings.eta,
                                                 settings.renoise)
            return SampledResidual(crop(prediction), crop(noise_left))
    finally:
        if isinstance(step, GraphReplay):
            step.trim()  # the shapes this decode used stay for the next
