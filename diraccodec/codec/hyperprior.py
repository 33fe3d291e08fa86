"""The multi-rate mean-scale hyperprior: the base codec of diraccodec.

One set of weights serves every rate level. A level selects a learned gain vector that
scales the latents before quantisation (a large gain means fine quantisation, many bits)
and an inverse gain applied before synthesis (Cui et al. 2021, "asymmetric gained"
compression). A fractional level interpolates the gains geometrically, so rate is
continuous in the quality index. With `context="checkerboard"` the non-anchor half of the
latents refines its mean and scale from the decoded anchors (diraccodec.entropy.context).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diraccodec.entropy.context import CheckerboardContext, anchor_mask
from diraccodec.entropy.models import (
    FactorizedPrior,
    gaussian_bin_likelihood,
    quantize_with_noise,
    round_straight_through,
)
from diraccodec.options import CONTEXTS
from diraccodec.transforms.networks import (
    AnalysisTransform,
    HyperAnalysis,
    HyperSynthesis,
    SynthesisTransform,
)

# Rate-distortion trade-offs of the levels: loss = lambda * 255^2 * MSE + bpp.
DEFAULT_LAMBDAS = (0.0005, 0.00107, 0.00227, 0.00484, 0.0103, 0.0220, 0.0469, 0.1000)


def ladder_position(lambdas: Sequence[float], value: float) -> float:
    """The (1-based, fractional) level at which the trade-off `value` falls on the ascending
    ladder `lambdas`: linear in log-lambda between the two nearest levels, and extended along
    the end segments beyond them. What one ladder's level means on another."""
    logs = [math.log(entry) for entry in lambdas]
    target = math.log(value)
    low = min(max(bisect.bisect_right(logs, target), 1), len(logs) - 1) - 1
    return low + 1 + (target - logs[low]) / (logs[low + 1] - logs[low])


def row_at(table: torch.Tensor, position: float) -> torch.Tensor:
    """Row `position` (0-based, fractional) of `table`: linear between the two nearest rows,
    and extended along the end segments beyond them (a caller that must not go beyond clamps
    `position` first)."""
    low = min(max(math.floor(position), 0), len(table) - 2)
    weight = position - low
    return (1 - weight) * table[low] + weight * table[low + 1]


@dataclass(frozen=True)
class HyperpriorConfig:
    channels: int = 96  # N: width of the hyper transforms, and of the two below unless given
    latent_channels: int = 160  # M: channels of y
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    context: str = "none"  # one of CONTEXTS: how the latents' mean and scale are predicted
    # The analysis and the synthesis may differ in width (None: N). Only the encoder runs the
    # analysis, once per image; the decoder runs the synthesis, and the encoder's search runs
    # it again on every pass, so the two widths cost the CPU differently (models.md).
    analysis_channels: int | None = None
    synthesis_channels: int | None = None

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context model {self.context!r} (expected one of {', '.join(CONTEXTS)})")

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> HyperpriorConfig:
        """The configuration as a weights file or a training state records it (older ones
        have no context field: they are plain hyperpriors; nor widths of their own)."""
        return cls(fields["channels"], fields["latent_channels"], tuple(fields["lambdas"]),
                   fields.get("context", "none"), fields.get("analysis_channels"), fields.get("synthesis_channels"))

    def as_fields(self) -> dict[str, Any]:
        """What a weights file or a training state records: widths only where they differ
        from N, so that the fields, and so the id, of weights of one width do not depend on
        the separate widths existing."""
        fields = asdict(self)
        for name in ("analysis_channels", "synthesis_channels"):
            if fields[name] is None:
                del fields[name]
        return fields

    @property
    def analysis_width(self) -> int:
        return self.analysis_channels or self.channels

    @property
    def synthesis_width(self) -> int:
        return self.synthesis_channels or self.channels

    @property
    def num_levels(self) -> int:
        return len(self.lambdas)


@dataclass
class ForwardResult:
    reconstruction: torch.Tensor
    bits_latent: torch.Tensor  # per image
    bits_hyper: torch.Tensor  # per image


class MultiRateHyperprior(nn.Module):
    """The base codec's networks: analysis and synthesis transforms, the hyperprior that
    predicts each latent's mean and scale, and an optional checkerboard context. One model
    serves every rate level: a learned gain per level and channel scales the latents before
    rounding (and its inverse after), interpolated between whole levels."""

    def __init__(self, config: HyperpriorConfig = HyperpriorConfig()) -> None:
        super().__init__()
        self.config = config
        n, m = config.channels, config.latent_channels
        self.analysis = AnalysisTransform(config.analysis_width, m)
        self.synthesis = SynthesisTransform(config.synthesis_width, m)
        self.hyper_analysis = HyperAnalysis(n, m)
        self.hyper_synthesis = HyperSynthesis(n, m)
        self.hyper_prior = FactorizedPrior(n)
        self.context = CheckerboardContext(m) if config.context == "checkerboard" else None
        # Level 1 starts with 8x coarser quantisation than the top level; training moves them.
        start = torch.linspace(math.log(1 / 8), 0.0, config.num_levels)
        self.log_gain = nn.Parameter(start[:, None].repeat(1, m))
        self.log_inverse_gain = nn.Parameter(-start[:, None].repeat(1, m))

    def gains(self, level_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and inverse gain, shape (B, M, 1, 1), at (B,) fractional positions along the
        trained levels: a level index counts from 0, as the model's tables do, where a file's
        level counts from 1 (index 0 is level 1)."""
        position = level_index.to(self.log_gain.dtype).clamp(0, self.config.num_levels - 1)
        low = position.floor().long().clamp(max=self.config.num_levels - 2)
        weight = (position - low.to(position.dtype))[:, None]
        log_gain = (1 - weight) * self.log_gain[low] + weight * self.log_gain[low + 1]
        log_inverse = (1 - weight) * self.log_inverse_gain[low] + weight * self.log_inverse_gain[low + 1]
        return log_gain.exp()[:, :, None, None], log_inverse.exp()[:, :, None, None]

    def mean_and_scale(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hyperprior's prediction for every latent (the anchors' with a context model)."""
        mean, scale = self.hyper_synthesis(z_hat).chunk(2, dim=1)
        return mean, scale.abs()

    def latent_parameters(self, y: torch.Tensor, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and scale that code each latent of `y`: the hyperprior's, refined at the
        non-anchors from the anchors rounded as the decoder will have them, with a context model."""
        mean, scale = self.mean_and_scale(z_hat)
        if self.context is None:
            return mean, scale
        anchors_hat = round_straight_through(y - mean) + mean
        context_mean, context_scale = self.context(anchors_hat, mean, scale)
        is_anchor = anchor_mask(*y.shape[-2:], device=y.device)
        return torch.where(is_anchor, mean, context_mean), torch.where(is_anchor, scale, context_scale)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, level_index: torch.Tensor) -> torch.Tensor:
        """What the decoder shows at 0 steps: hard-quantised latents, 8-bit output, at (B,)
        level indices (`gains`: a file's level 1 is index 0); indices below 0 are clamped to
        it, where the codec extrapolates the levels below 1.

        Float32 on any device; the bit-exact coding path is diraccodec.codec.base_codec's, its
        entropy model diraccodec.entropy.latent_stream's. The diffusion decoder trains on these
        reconstructions.
        """
        gain, inverse_gain = self.gains(level_index)
        y = self.analysis(x) * gain
        mean, _ = self.latent_parameters(y, torch.round(self.hyper_analysis(y)))
        y_hat = torch.round(y - mean) + mean
        return self.synthesis(y_hat * inverse_gain).clamp(0, 1).mul(255).round().div(255)

    def rate(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The entropy model alone: bits of the (gain-scaled) latents and their hyper-latents.

        Returns the predicted mean (which the decoder adds back), the bits of the latents
        and of the hyper-latents per image; noise stands in for rounding in the rate. In
        float32 whatever the autocast (training's --bf16 is for the transforms): bfloat16's 8
        bits would round the latents' integer steps and the likelihoods' small differences.
        """
        with torch.autocast(y.device.type, enabled=False):
            return self._rate(y.float())

    def _rate(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.hyper_analysis(y)
        z_likelihood = self.hyper_prior.likelihood(quantize_with_noise(z))
        mean, scale = self.latent_parameters(y, round_straight_through(z))
        y_likelihood = gaussian_bin_likelihood(quantize_with_noise(y - mean) + mean, mean, scale)
        bits_latent = -torch.log2(y_likelihood).flatten(1).sum(1)
        return mean, bits_latent, -torch.log2(z_likelihood).flatten(1).sum(1)

    def forward(self, x: torch.Tensor, level_index: torch.Tensor) -> ForwardResult:
        """Training pass at (B,) level indices (`gains`): noise for the rate, straight-through
        rounding for the decoder."""
        gain, inverse_gain = self.gains(level_index)
        y = self.analysis(x) * gain
        mean, bits_latent, bits_hyper = self.rate(y)
        y_hat = round_straight_through(y - mean) + mean
        reconstruction = self.synthesis(y_hat * inverse_gain)
        return ForwardResult(reconstruction=reconstruction, bits_latent=bits_latent, bits_hyper=bits_hyper)
