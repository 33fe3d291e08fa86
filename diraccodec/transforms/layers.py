"""Small reusable layers of the transforms: convolutions that halve or double the grid, GDN,
the separable Gaussian blur that MS-SSIM and the sampler's finishing share, and the local
periodic part of an image that the finishing can take out."""

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


def gaussian_window(sigma: float, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian taps at -radius..radius."""
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return taps / taps.sum()


def blur_radius(sigma: float) -> int:
    """The taps either side of a Gaussian blur of `sigma`: three sigma hold all but 0.3% of it."""
    return math.ceil(3 * sigma)


def separable_blur(x: torch.Tensor, window: torch.Tensor, pad: bool = False) -> torch.Tensor:
    """Each channel of (N, C, H, W) filtered by `window` along both axes (2k taps, not k^2).

    pad=False: the 'valid' part only (smaller output); pad=True: edges replicated, same size
    (replication works for any image size, where reflection needs more pixels than taps).
    """
    size, channels = window.numel(), x.shape[1]
    window = window.to(x)
    if pad:
        x = F.pad(x, (size // 2,) * 4, mode="replicate")
    x = F.conv2d(x, window.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return F.conv2d(x, window.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) blurred by a Gaussian of `sigma`, same size, edges replicated."""
    return separable_blur(x, gaussian_window(sigma, blur_radius(sigma)), pad=True)


def periodic_component(x: torch.Tensor, period: int, cells: float) -> torch.Tensor:
    """The part of (N, C, H, W) that repeats every `period` pixels along both axes, measured
    locally (a Gaussian of `cells` periods over the period's grid) and without its local mean.

    A network that upsamples by sub-pixel convolutions leaves a lattice of this kind, locked
    to its grid; subtracting it notches the harmonics of 1/period out of an image and leaves
    the rest nearly untouched. It is measured on the image minus its blur (sigma period/2,
    which keeps 99% of the lowest harmonic), since averaging by position within the period
    would take a smooth slope for a sawtooth. The grid starts at the top-left pixel; where the
    image does not fill a whole period, the missing pixels have weight 0 in the averages.
    """
    batch, channels, height, width = x.shape
    detail = x - gaussian_blur(x, period / 2)
    # one plane per position within the period, each averaged over nearby periods
    extra = (0, -width % period, 0, -height % period)
    phases = F.pixel_unshuffle(F.pad(detail, extra), period)
    present = F.pixel_unshuffle(F.pad(torch.ones_like(detail[:, :1]), extra), period)
    radius = blur_radius(cells)
    window = gaussian_window(cells, radius)

    def average(planes: torch.Tensor) -> torch.Tensor:
        return separable_blur(F.pad(planes, (radius,) * 4), window)

    local = average(phases) / average(present).clamp_min(1e-6).repeat(1, channels, 1, 1)
    rows, columns = local.shape[-2:]
    local_mean = local.view(batch, channels, period * period, rows, columns).mean(dim=2)
    lattice = F.pixel_shuffle(local, period) - local_mean.repeat_interleave(period, -2).repeat_interleave(period, -1)
    return lattice[..., :height, :width]


def periodic_reach(period: int, cells: float) -> int:
    """The pixels either side, along an axis, that `periodic_component` at a pixel depends on,
    where the image's part starts and ends on the period's grid (or at the image's own edge)."""
    return period * blur_radius(cells) + blur_radius(period / 2)


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
