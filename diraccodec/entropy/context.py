"""A checkerboard context model (He et al. 2021): the latents are coded in two halves.

The anchors, the latents whose row + column is even, are coded first, with the mean and
scale that the hyperprior predicts. Every other latent then refines its mean and scale from
the decoded anchors around it (a 5x5 neighbourhood holds 12 of them). Both halves decode in
one parallel pass each, so the decoder stays as parallel as the hyperprior alone, where a
raster-order context would decode one latent at a time.

Training runs the context as a masked convolution over the whole grid. Coding runs it at the
non-anchors only, each tap a matrix product over the anchors it reads (`context_parameters`):
a quarter of the dense convolution's work. The current format computes it in fixed point
(`ContextLayers.fixed_point`, docs/format.md), exact on any device; files of format version 1
computed it in float64 on the CPU in a fixed order (`ContextLayers.float64`). Either way the
encoder and the decoder get the same bits.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from diraccodec.entropy.fixed_point import ACTIVATION_BITS, WEIGHT_BITS, fixed_weights, input_limit, to_grid

CONTEXT_KERNEL = 5
NEGATIVE_SLOPE = 0.01  # nn.LeakyReLU's default, which the coding paths repeat
POSITIONS_AT_ONCE = 16384  # non-anchors per matrix product: bounds the float64 buffers on a large image


def anchor_mask(rows: int, columns: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(rows, columns) bool, True at the anchors (row + column even), which are coded first."""
    parity = torch.arange(rows, device=device)[:, None] + torch.arange(columns, device=device)[None, :]
    return parity % 2 == 0


def _context_taps(kernel_size: int) -> list[tuple[int, int]]:
    """The kernel positions that fall on anchors when centred on a non-anchor: (dy + dx) odd."""
    return [(dy, dx) for dy in range(kernel_size) for dx in range(kernel_size) if (dy + dx) % 2 == 1]


class CheckerboardContext(nn.Module):
    """Refines the hyperprior's mean and scale of the non-anchors from the decoded anchors.

    The last layer starts at zero, so a new context model predicts exactly what the
    hyperprior predicts: it can start from trained hyperprior weights and only gain.
    """

    def __init__(self, latent_channels: int, kernel_size: int = CONTEXT_KERNEL) -> None:
        super().__init__()
        m = latent_channels
        self.context = nn.Conv2d(m, m, kernel_size, padding=kernel_size // 2)
        self.parameters_net = nn.Sequential(
            nn.Conv2d(3 * m, 2 * m, 1), nn.LeakyReLU(NEGATIVE_SLOPE), nn.Conv2d(2 * m, 2 * m, 1)
        )
        nn.init.zeros_(self.parameters_net[-1].weight)
        nn.init.zeros_(self.parameters_net[-1].bias)
        mask = torch.zeros(1, 1, kernel_size, kernel_size)
        for dy, dx in _context_taps(kernel_size):
            mask[0, 0, dy, dx] = 1.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(
        self, y_hat: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and scale of every position as if it were a non-anchor; use them at the non-anchors
        only, whose taps read anchors alone (the values of y_hat elsewhere do not matter there)."""
        features = F.conv2d(y_hat, self.context.weight * self.mask, self.context.bias,
                            padding=self.context.padding)
        change_mean, change_scale = self.parameters_net(torch.cat([mean, scale, features], dim=1)).chunk(2, dim=1)
        return mean + change_mean, (scale + change_scale).abs()


class ContextLayers:
    """A context model's layers in one coding arithmetic, with the steps it takes between them.

    `float64`: the trained weights in float64, values as they come (run on the CPU in a fixed
    order). `fixed_point`: weights on a 2^-WEIGHT_BITS grid, and every layer's input rounded to
    a 2^-ACTIVATION_BITS grid and clamped, so that every sum is an exact integer below 2^53
    (diraccodec.entropy.fixed_point): the same values on any device.
    """

    def __init__(self, context: CheckerboardContext, fixed: bool, device: torch.device | str = "cpu") -> None:
        self.fixed = fixed
        self.padding = context.context.kernel_size[0] // 2
        self.taps = _context_taps(context.context.kernel_size[0])
        first, _, last = context.parameters_net
        layers = [(context.context.weight * context.mask, context.context.bias),
                  (first.weight[:, :, 0, 0], first.bias), (last.weight[:, :, 0, 0], last.bias)]
        if fixed:
            layers = [fixed_weights(weight, bias, ACTIVATION_BITS) for weight, bias in layers]
            self.limits = [input_limit(weight, bias, tuple(range(1, weight.dim())), ACTIVATION_BITS, name)
                           for (weight, bias), name in zip(layers, ("the context", "its first layer",
                                                                     "its second layer"), strict=True)]
        else:
            layers = [(weight.detach().double(), bias.detach().double()) for weight, bias in layers]
        (weight, bias), (self.first_weight, first_bias), (self.last_weight, last_bias) = [
            (weight.to(device), bias.to(device)[:, None]) for weight, bias in layers]
        self.tap_weights = [weight[:, :, dy, dx] for dy, dx in self.taps]
        self.feature_bias, self.first_bias, self.last_bias = bias, first_bias, last_bias

    @classmethod
    def float64(cls, context: CheckerboardContext) -> ContextLayers:
        return cls(context, fixed=False)

    @classmethod
    def fixed_point(cls, context: CheckerboardContext, device: torch.device | str = "cpu") -> ContextLayers:
        return cls(context, fixed=True, device=device)

    def layer_input(self, values: torch.Tensor, layer: int) -> torch.Tensor:
        """A layer's input: in fixed point its values on the activation grid, clamped."""
        if not self.fixed:
            return values
        return to_grid(values, ACTIVATION_BITS).clamp_(-self.limits[layer], self.limits[layer])

    def output(self, sums: torch.Tensor) -> torch.Tensor:
        """A layer's sums as values: in fixed point they are integers on the grid of its products."""
        return sums * 2.0 ** -(WEIGHT_BITS + ACTIVATION_BITS) if self.fixed else sums


@torch.no_grad()
def context_parameters(
    layers: ContextLayers, symbols: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The non-anchors' mean and scale, chunk by chunk: (positions, mean, scale), positions as
    flat indices of the (h, w) grid in raster order, the others (M, chunk) float64.

    The anchors are `symbols + mean` (symbols (M, h, w) of any type; only the anchors' are read);
    mean and scale, (M, h, w) float64 on the layers' device, are the hyperprior's. The float64
    sums run in a fixed order (tap by tap, then the 1x1 layers) over chunks whose bounds depend
    on the grid's size alone, so an encoder and a decoder compute the same values; the fixed
    point's are exact in any order. A caller may overwrite each chunk's mean once it has it: a
    chunk reads the mean of its own positions and, through the anchors, no other.
    """
    channels, rows, columns = mean.shape
    pad = layers.padding
    padded = mean.new_zeros(channels, rows + 2 * pad, columns + 2 * pad)
    anchors = padded[:, pad : pad + rows, pad : pad + columns]  # built in place: one image-sized buffer
    anchors.copy_(symbols).add_(mean).mul_(anchor_mask(rows, columns, mean.device))
    anchors.copy_(layers.layer_input(anchors, 0))
    flat_mean, flat_scale = mean.view(channels, -1), scale.reshape(channels, -1)
    positions = (~anchor_mask(rows, columns, mean.device)).flatten().nonzero().squeeze(1)
    for start in range(0, positions.numel(), POSITIONS_AT_ONCE):
        chunk = positions[start : start + POSITIONS_AT_ONCE]
        row, column = chunk // columns, chunk % columns
        features = layers.feature_bias.expand(-1, chunk.numel()).clone()
        for (dy, dx), weight in zip(layers.taps, layers.tap_weights, strict=True):
            features.addmm_(weight, padded[:, row + dy, column + dx])
        chunk_mean, chunk_scale = flat_mean[:, chunk], flat_scale[:, chunk]
        hidden = layers.layer_input(torch.cat([chunk_mean, chunk_scale, layers.output(features)]), 1)
        hidden = F.leaky_relu(torch.addmm(layers.first_bias, layers.first_weight, hidden), NEGATIVE_SLOPE)
        hidden = layers.layer_input(layers.output(hidden), 2)
        change = layers.output(torch.addmm(layers.last_bias, layers.last_weight, hidden))
        yield chunk, chunk_mean + change[:channels], (chunk_scale + change[channels:]).abs()
