"""Fixed-point arithmetic for the small networks that set the entropy tables (the
hyper-synthesis here, the context model in `context.py`): the same values on every device.

The decoder must derive the encoder's tables bit for bit. A float sum depends on its order,
and the order differs between CPU kernels, thread counts and GPUs. Here every weight is
rounded to a multiple of 2^-WEIGHT_BITS and every activation to a multiple of
2^-ACTIVATION_BITS, so each product is an integer multiple of a fixed grid and every partial
sum an integer below 2^53: float64 holds them all exactly, so a sum in any order, by any
kernel, on any device, gives the same value (the integer networks of Balle et al. 2019, kept
in float64 because torch convolves floats on every device). The leaky ReLU and the rounding
back to the grid act on one value at a time, and IEEE arithmetic rounds those alike
everywhere. Inputs are clamped where a corrupt stream could push a sum past 2^53; the values
of real images stay far inside.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

WEIGHT_BITS = 16  # weights and biases on a grid of 2^-16
ACTIVATION_BITS = 16  # hidden activations on a grid of 2^-16
EXACT_BELOW = 2.0**53  # float64 holds every integer below this exactly
# Weights whose sums would clamp inputs below this value are refused: the shipped weights'
# hyper-synthesis sees at most 48 (hyper-latents), 15.5 and 5.8 (hidden) on 20 training photos
# at levels 1, 4 and 8, against clamps of 1.8e9, 15,500 and 3,100.
SMALLEST_LIMIT = 256.0


@dataclass(frozen=True)
class _FixedLayer:
    """One convolution in grid units: integer weight and bias (float64), the input's fraction
    bits, the clamp that keeps its sums exact, and the slope of the leaky ReLU after it."""

    convolution: nn.Conv2d | nn.ConvTranspose2d
    weight: torch.Tensor
    bias: torch.Tensor
    input_bits: int
    input_limit: float
    slope: float | None  # None for the last layer, whose output leaves the grid as a value


def to_grid(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Values as integers on a grid of 2^-bits, rounded to nearest (ties to even) alike everywhere."""
    return (values * 2.0**bits).round_()


def fixed_weights(weight: torch.Tensor, bias: torch.Tensor | None,
                  input_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's integer weight (grid 2^-WEIGHT_BITS) and bias (the grid of its sums, 2^-(WEIGHT_BITS +
    input_bits)), in float64 on the CPU, from its float weights."""
    float_bias = bias if bias is not None else weight.new_zeros(weight.shape[0])
    return (to_grid(weight.detach().double().cpu(), WEIGHT_BITS),
            to_grid(float_bias.detach().double().cpu(), WEIGHT_BITS + input_bits))


def input_limit(weight: torch.Tensor, bias: torch.Tensor, input_dims: tuple[int, ...], input_bits: int,
                name: str) -> float:
    """The clamp on a layer's integer inputs that keeps every sum below 2^53: the largest sum an
    output can reach is its weights' magnitudes (summed over `input_dims`) times the inputs' bound."""
    reach = float(weight.abs().sum(input_dims).max())
    limit = math.floor((EXACT_BELOW - 1 - float(bias.abs().max())) / max(reach, 1.0))
    if limit < SMALLEST_LIMIT * 2.0**input_bits:
        raise ValueError(f"weights too large for exact fixed-point sums ({name} would clamp its inputs at "
                         f"{limit * 2.0**-input_bits:.3g}, below {SMALLEST_LIMIT:g})")
    return float(limit)


class FixedPointNetwork:
    """A stack of Conv2d / ConvTranspose2d layers with leaky ReLUs between them, evaluated in
    fixed point on integer inputs (hyper-latents): exact, so alike on every device.

    Its outputs differ from the float network's by the rounding of the weights (about 1e-5
    relative), far below what moves a latent's table.
    """

    def __init__(self, network: nn.Sequential, device: torch.device | str = "cpu") -> None:
        modules = list(network)
        layers, input_bits = [], 0
        for index, module in enumerate(modules):
            if isinstance(module, nn.LeakyReLU):
                continue
            if not isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                raise TypeError(f"no fixed-point form of {type(module).__name__}")
            following = modules[index + 1] if index + 1 < len(modules) else None
            slope = following.negative_slope if isinstance(following, nn.LeakyReLU) else None
            if slope is None and index + 1 < len(modules):
                raise TypeError("only leaky ReLUs may follow a convolution before the last")
            weight, bias = fixed_weights(module.weight, module.bias, input_bits)
            input_dims = (0, 2, 3) if isinstance(module, nn.ConvTranspose2d) else (1, 2, 3)
            limit = input_limit(weight, bias, input_dims, input_bits, f"layer {index}")
            layers.append(_FixedLayer(module, weight.to(device), bias.to(device), input_bits, limit, slope))
            input_bits = ACTIVATION_BITS
        self.layers = layers
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, integers: torch.Tensor) -> torch.Tensor:
        """The network's float64 output for (N, C, H, W) integer inputs (any float or int dtype)."""
        x = integers.to(self.device, torch.float64)
        with _native_kernels(self.device):
            for layer in self.layers:
                x = x.clamp(-layer.input_limit, layer.input_limit)
                x = _convolve(layer, x)  # an exact integer at 2^-(WEIGHT_BITS + input_bits)
                output_bits = WEIGHT_BITS + layer.input_bits
                if layer.slope is None:
                    return x.mul_(2.0**-output_bits)
                x = torch.where(x < 0, x * layer.slope, x)  # the leaky ReLU, on grid units
                x = to_grid(x, ACTIVATION_BITS - output_bits)
        raise ValueError("the network has no layers")


def _convolve(layer: _FixedLayer, x: torch.Tensor) -> torch.Tensor:
    conv = layer.convolution
    if isinstance(conv, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, layer.weight, layer.bias, conv.stride, conv.padding, conv.output_padding,
                                  conv.groups, conv.dilation)
    return F.conv2d(x, layer.weight, layer.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@contextlib.contextmanager
def _native_kernels(device: torch.device) -> Iterator[None]:
    """On CUDA, torch's own im2col-and-matrix-product kernels rather than cuDNN's, whose choice
    of algorithm may include transforms (FFT, Winograd) that round: a sum of exact products is
    exact in any order, a transformed one is not. Only cuDNN's on-off flag is touched."""
    cudnn = torch.backends.cudnn
    before = cudnn.enabled
    if device.type == "cuda":
        cudnn.enabled = False
    try:
        yield
    finally:
        cudnn.enabled = before
