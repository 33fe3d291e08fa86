"""Wider transforms and more latents that start out computing exactly what trained ones compute.

A short GPU run cannot train a larger base codec from scratch past the shipped one, but it can
grow the shipped one (as Net2Net grows a network, Chen et al. 2016). Two kinds of channel grow:

- A new hidden channel of a wider analysis or synthesis is active and unheard: it keeps the
  fresh layer's random weights from its inputs, and the weights from it into the old channels
  are 0, as are GDN's couplings that normalise an old channel by it.
- A new latent channel (a larger M) starts silent: the layers that make latent-sized
  channels (the analysis's latents, the hyperprior's and the context model's means and
  scales, the context features) give it zero weights, so it is 0 and codes as symbol 0 at
  the smallest scale. Its scale starts at that smallest scale rather than at 0, where the
  scale's absolute value would pass back no gradient. The synthesis reads it with random
  weights, which multiply 0 and carry the gradient that brings it into use; the entropy
  model's layers read it with zero weights (their new hidden channels aside), so the trained
  entropy model is not disturbed as it comes into use.

Either way the old channels compute what they did (up to the rounding of longer sums) and the
output is unchanged, and the zero weights receive gradients, so training puts the new
channels to use from there.
"""

from __future__ import annotations

import torch
from torch import nn

from diraccodec.codec.hyperprior import MultiRateHyperprior
from diraccodec.entropy.models import SCALE_LOWER_BOUND
from diraccodec.transforms.layers import GDN


def grow_model(start: MultiRateHyperprior, model: MultiRateHyperprior) -> None:
    """Copy `start` into `model`, whose transforms may be wider and whose latents may be more
    (the same N and ladder), so that `model` codes as `start` does. A context model that start
    lacks keeps its initial zero last layer; the gains are left to the caller."""
    if start.context is not None and model.context is None:
        raise ValueError("the start has a context model")
    widen_into(start.analysis, model.analysis, outputs_silent=True)
    widen_into(start.synthesis, model.synthesis, inputs_silent=True)
    widen_into(start.hyper_analysis, model.hyper_analysis)
    widen_into(start.hyper_synthesis, model.hyper_synthesis, output_blocks=2, outputs_silent=True)  # means, scales
    with torch.no_grad():
        model.hyper_synthesis[-1].bias.chunk(2)[1][start.config.latent_channels:] = SCALE_LOWER_BOUND
    model.hyper_prior.load_state_dict(start.hyper_prior.state_dict())
    if start.context is not None and model.context is not None:
        with torch.no_grad():
            _grow_convolution(start.context.context, model.context.context, outputs_silent=True)
        # reads the means, the scales and the features; changes the means and the scales
        widen_into(start.context.parameters_net, model.context.parameters_net, input_blocks=3, output_blocks=2,
                   outputs_silent=True)


def grown_gains(log_gains: torch.Tensor, latent_channels: int) -> torch.Tensor:
    """Log-gains (levels, latent_channels) from trained ones (levels, M): a new latent's gain at
    each level is the mean of the trained ones there, a typical quantisation step for when it
    comes into use."""
    extra = latent_channels - log_gains.shape[1]
    if extra < 0:
        raise ValueError(f"{log_gains.shape[1]} latent channels cannot grow into {latent_channels}")
    return torch.cat([log_gains, log_gains.mean(1, keepdim=True).expand(-1, extra)], dim=1)


def widen_into(trained: nn.Sequential, wider: nn.Sequential, *, input_blocks: int = 1, output_blocks: int = 1,
               inputs_silent: bool = False, outputs_silent: bool = False) -> None:
    """Copy the convolution and GDN stack `trained` into `wider`, the same stack with more
    channels, so that `wider` computes what `trained` does. The old channels come first in every
    layer, and first in each of the blocks that the stack's inputs and outputs are made of (its
    last layer may give the latents' means and then their scales: output_blocks=2).
    inputs_silent: the new inputs are 0 at the start (new latents), so the first layer keeps its
    random weights from them; outputs_silent: the last layer's new outputs start at 0."""
    if len(trained) != len(wider):
        raise ValueError(f"{len(trained)} layers cannot grow into {len(wider)}")
    last = len(trained) - 1
    with torch.no_grad():
        for index, (small, large) in enumerate(zip(trained, wider, strict=True)):
            if type(small) is not type(large):
                raise ValueError(f"a {type(small).__name__} cannot grow into a {type(large).__name__}")
            if isinstance(small, nn.Conv2d | nn.ConvTranspose2d):
                first = index == 0
                _grow_convolution(small, large, input_blocks=input_blocks if first else 1,
                                  output_blocks=output_blocks if index == last else 1,
                                  inputs_silent=inputs_silent and first,
                                  outputs_silent=outputs_silent and index == last)
            elif isinstance(small, GDN):
                _widen_normalisation(small, large)
            elif any(True for _ in small.parameters()):
                raise ValueError(f"cannot widen a {type(small).__name__}")


def _old_positions(old: int, new: int, blocks: int) -> torch.Tensor:
    """Where `old` channels, made of `blocks` equal blocks, sit among `new` ones: first in each block."""
    if old % blocks or new % blocks:
        raise ValueError(f"{old} and {new} channels are not {blocks} equal blocks")
    old_block, new_block = old // blocks, new // blocks
    return (torch.arange(blocks)[:, None] * new_block + torch.arange(old_block)[None, :]).flatten()


def _grow_convolution(small: nn.Conv2d | nn.ConvTranspose2d, large: nn.Conv2d | nn.ConvTranspose2d, *,
                      input_blocks: int = 1, output_blocks: int = 1, inputs_silent: bool = False,
                      outputs_silent: bool = False) -> None:
    if small.in_channels > large.in_channels or small.out_channels > large.out_channels:
        raise ValueError(f"a convolution of {small.in_channels}->{small.out_channels} channels cannot "
                         f"grow into {large.in_channels}->{large.out_channels}")
    # a transposed convolution stores its weight as (in, out, ...), a convolution as (out, in, ...)
    transposed = isinstance(large, nn.ConvTranspose2d)
    weight = large.weight.transpose(0, 1) if transposed else large.weight  # (out, in, ...), a view
    old_weight = small.weight.transpose(0, 1) if transposed else small.weight
    old_out = _old_positions(small.out_channels, large.out_channels, output_blocks)
    old_in = _old_positions(small.in_channels, large.in_channels, input_blocks)
    if outputs_silent:
        new_out = torch.ones(large.out_channels, dtype=torch.bool)
        new_out[old_out] = False
        weight[new_out] = 0
        if large.bias is not None:
            large.bias[new_out] = 0
    if not inputs_silent:
        weight[old_out] = 0  # an old output does not read the new (active) inputs
    weight[old_out[:, None], old_in[None, :]] = old_weight
    if small.bias is not None and large.bias is not None:
        large.bias[old_out] = small.bias


def _widen_normalisation(small: GDN, large: GDN) -> None:
    old, new = small.beta_root.numel(), large.beta_root.numel()
    if old > new or small.inverse != large.inverse:
        raise ValueError(f"a GDN of {old} channels cannot grow into this one of {new}")
    large.beta_root[:old].copy_(small.beta_root)
    large.gamma_root[:old, :old].copy_(small.gamma_root)
    large.gamma_root[:old, old:].zero_()  # an old channel is not normalised by the new ones
