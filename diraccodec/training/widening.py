"""Wider transforms that start out computing exactly what trained ones compute.

A short GPU run cannot train a larger base codec from scratch past the shipped one, but it can
grow the shipped one (as Net2Net grows a network, Chen et al. 2016). Every new channel of the
wider analysis or synthesis keeps the fresh layer's random weights from its inputs, and gives
nothing to the old channels: the weights from new channels into old ones are 0, and so are
GDN's couplings that normalise an old channel by a new one. The old channels therefore
compute what they did, the output is unchanged, and the zero weights out of the new channels
receive gradients (the new channels are active), so training puts them to use from there.
"""

from __future__ import annotations

import torch
from torch import nn

from diraccodec.transforms.layers import GDN


def widen_into(trained: nn.Sequential, wider: nn.Sequential) -> None:
    """Copy the convolution and GDN stack `trained` into `wider`, the same stack with more
    channels between its layers (the same inputs and outputs), so that `wider` computes what
    `trained` does. The old channels come first in every layer."""
    if len(trained) != len(wider):
        raise ValueError(f"{len(trained)} layers cannot grow into {len(wider)}")
    with torch.no_grad():
        for small, large in zip(trained, wider, strict=True):
            if type(small) is not type(large):
                raise ValueError(f"a {type(small).__name__} cannot grow into a {type(large).__name__}")
            if isinstance(small, nn.Conv2d | nn.ConvTranspose2d):
                _widen_convolution(small, large)
            elif isinstance(small, GDN):
                _widen_normalisation(small, large)
            elif any(True for _ in small.parameters()):
                raise ValueError(f"cannot widen a {type(small).__name__}")


def _widen_convolution(small: nn.Conv2d | nn.ConvTranspose2d, large: nn.Conv2d | nn.ConvTranspose2d) -> None:
    if small.in_channels > large.in_channels or small.out_channels > large.out_channels:
        raise ValueError(f"a convolution of {small.in_channels}->{small.out_channels} channels cannot "
                         f"grow into {large.in_channels}->{large.out_channels}")
    # a transposed convolution stores its weight as (in, out, ...), a convolution as (out, in, ...)
    out_axis, in_axis = (1, 0) if isinstance(large, nn.ConvTranspose2d) else (0, 1)
    old_outputs = large.weight.narrow(out_axis, 0, small.out_channels)
    old_outputs.zero_()
    old_outputs.narrow(in_axis, 0, small.in_channels).copy_(small.weight)
    if small.bias is not None and large.bias is not None:
        large.bias[: small.out_channels].copy_(small.bias)


def _widen_normalisation(small: GDN, large: GDN) -> None:
    old, new = small.beta_root.numel(), large.beta_root.numel()
    if old > new or small.inverse != large.inverse:
        raise ValueError(f"a GDN of {old} channels cannot grow into this one of {new}")
    large.beta_root[:old].copy_(small.beta_root)
    large.gamma_root[:old, :old].copy_(small.gamma_root)
    large.gamma_root[:old, old:].zero_()  # an old channel is not normalised by the new ones
