"""Small reusable layers of the transforms: convolutions that halve or double the grid, and GDN."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it would push x back above the bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


# The smallest slope the square of a stored root passes back (CompressAI's GDN reaches the same
# with a pedestal of 2^-36 under the square).
ROOT_SLOPE_FLOOR = 2.0**-17


class _SquareOfRoot(torch.autograd.Function):
    """root^2 for a non-negative root, whose gradient does not vanish at a root of 0.

    The true slope 2 * root is 0 there, so an entry that starts at 0 (GDN's off-diagonal
    couplings) would never move; below ROOT_SLOPE_FLOOR the slope is held at that floor. The
    value is the plain square, so trained weights compute exactly what they did.
    """

    @staticmethod
    def forward(ctx, root: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(root)
        return root * root

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (root,) = ctx.saved_tensors
        return grad * 2 * root.clamp_min(ROOT_SLOPE_FLOOR)


def square_of_root(root: torch.Tensor) -> torch.Tensor:
    return _SquareOfRoot.apply(root)


def conv_down(in_channels: int, out_channels: int, kernel_size: int = 5) -> nn.Conv2d:
    """Stride-2 convolution; 'same' padding so a grid of size 2n becomes n."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2)


def conv_up(in_channels: int, out_channels: int, kernel_size: int = 5) -> nn.ConvTranspose2d:
    """Stride-2 transposed convolution, the exact inverse of `conv_down` in grid size."""
    return nn.ConvTranspose2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=2,
        padding=kernel_size // 2,
        output_padding=1,
    )


def conv_same(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016).

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2), or its inverse (multiply) in the
    synthesis. beta and gamma are stored as square roots and squared in the forward pass:
    they stay non-negative, and (unlike a softplus) a small entry still learns at the
    optimiser's full pace. gamma starts diagonal; its couplings between channels start at 0
    and learn through `square_of_root`, whose slope does not vanish there.
    """

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta_root = nn.Parameter(torch.ones(channels))
        self.gamma_root = nn.Parameter(math.sqrt(0.1) * torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = lower_bound(self.beta_root, 1e-3).pow(2)
        gamma = square_of_root(lower_bound(self.gamma_root, 0.0))
        channels = gamma.shape[0]
        norm = torch.sqrt(F.conv2d(x * x, gamma.view(channels, channels, 1, 1), beta))
        return x * norm if self.inverse else x / norm
