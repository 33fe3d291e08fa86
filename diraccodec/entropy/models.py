"""Differentiable probability models of the latents, used for training and for tabulation.

They are kept apart from the transforms: a transform maps pixels to latents, an entropy
model says how many bits a latent costs. The integer tables that the range coder uses
are built from these models once, at export (see `diraccodec.entropy.tables`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from diraccodec.entropy.tables import SCALE_MIN
from diraccodec.transforms.layers import lower_bound

SCALE_LOWER_BOUND = SCALE_MIN  # no predicted scale below the tables' smallest
LIKELIHOOD_LOWER_BOUND = 1e-9


def quantize_with_noise(x: torch.Tensor) -> torch.Tensor:
    """Uniform noise in [-0.5, 0.5): the differentiable stand-in for rounding in the rate."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


def round_straight_through(x: torch.Tensor) -> torch.Tensor:
    """Rounding forward, identity backward: the decoder trains on the values it will see."""
    return x + (torch.round(x) - x).detach()


class FactorizedPrior(nn.Module):
    """A learned, per-channel density for the hyper-latents (Balle et al. 2018, appendix 6.1).

    The cumulative is a monotone scalar network; a latent's likelihood is the mass of its
    quantisation bin, cdf(z + 1/2) - cdf(z - 1/2).
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for index in range(len(widths) - 1):
            fan_in, fan_out = widths[index], widths[index + 1]
            init = math.log(math.expm1(1 / scale / fan_out))
            self.matrices.append(nn.Parameter(torch.full((channels, fan_out, fan_in), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, fan_out, 1).uniform_(-0.5, 0.5)))
            if index < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, fan_out, 1)))

    def logits_cumulative(self, values: torch.Tensor) -> torch.Tensor:
        """values: (channels, 1, n) -> logits of the cumulative, same shape."""
        logits = values
        for index, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if index < len(self.factors):
                logits = logits + torch.tanh(self.factors[index]) * torch.tanh(logits)
        return logits

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """z: (batch, channels, h, w) -> the probability of each value's unit bin."""
        batch, channels, height, width = z.shape
        values = z.permute(1, 0, 2, 3).reshape(channels, 1, -1)
        lower = self.logits_cumulative(values - 0.5)
        upper = self.logits_cumulative(values + 0.5)
        # Evaluate in the tail where sigmoid is not saturated, for precision.
        sign = -torch.sign(lower + upper).detach()
        probability = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        probability = probability.reshape(channels, batch, height, width).permute(1, 0, 2, 3)
        return lower_bound(probability, LIKELIHOOD_LOWER_BOUND)

    @torch.no_grad()
    def cumulative(self, values: torch.Tensor) -> torch.Tensor:
        """Cumulative distribution at `values` (channels, n), in the model's dtype."""
        return torch.sigmoid(self.logits_cumulative(values.unsqueeze(1))).squeeze(1)


def gaussian_bin_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of N(mean, scale) on the unit bin around y; uses the upper tail for precision."""
    scale = lower_bound(scale, SCALE_LOWER_BOUND)
    distance = torch.abs(y - mean)
    upper = _standard_normal_tail((distance - 0.5) / scale)
    lower = _standard_normal_tail((distance + 0.5) / scale)
    return lower_bound(upper - lower, LIKELIHOOD_LOWER_BOUND)


def _standard_normal_tail(x: torch.Tensor) -> torch.Tensor:
    """P(N(0,1) > x), computed with erfc so the far tail keeps its precision."""
    return 0.5 * torch.erfc(x * (1 / math.sqrt(2)))
