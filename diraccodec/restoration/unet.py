"""The conditional U-Net of the diffusion decoder, which the restoration filter runs once at a
fixed time (so it lives in the lower of the two layers).

It sees the noisy residual, the base reconstruction, the diffusion time and the rate level,
and predicts the clean residual x - x_base (x0 parameterisation), so every sampling step
yields a usable image. It works at half resolution after a pixel-unshuffle to be cheap on
a CPU, and it is purely local (no attention, no statistics over the image): its output
at a pixel depends only on a bounded neighbourhood, so tiles give the same result as the
whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

# The residuals the U-Net predicts, in units of 0.1 of the pixel range: they are small, and
# this brings them near the unit scale of its noise. The filter and the diffusion decoder
# both read its output so.
RESIDUAL_SCALE = 0.1
# The U-Net's tile on a CPU (4x wider on a GPU), and the least margin around it (more where
# the U-Net sees further), so that no seam shows. On a 12-megapixel photo a diffusion step
# takes 7.1 s with 1024-pixel tiles, 9.9 s with 768 (whose margins add more work) and 7.6 s
# with 2048 (whose working set outgrows the caches), on a 2-core CPU.
UNET_TILE = 1024
UNET_MARGIN = 96


@dataclass(frozen=True)
class ResidualUNetConfig:
    widths: tuple[int, ...] = (32, 64, 128)  # channels at 1/2, 1/4 and 1/8 of the image size
    embedding: int = 128
    max_level: float = 8.0
    # Residual blocks at each resolution on the way down, in the middle and on the way up.
    blocks: int = 1

    @classmethod
    def from_fields(cls, fields: dict) -> ResidualUNetConfig:
        """From the JSON of a weights file or checkpoint (where the widths are a list); a file
        that states no `blocks` has one block per resolution."""
        return cls(tuple(fields["widths"]), fields["embedding"], fields["max_level"], fields.get("blocks", 1))


def sinusoidal_embedding(values: torch.Tensor, dimensions: int) -> torch.Tensor:
    """values (B,) in [0, 1] -> (B, dimensions) features at geometric frequencies."""
    half = dimensions // 2
    steps = torch.arange(half, device=values.device, dtype=torch.float32)
    frequencies = torch.exp(steps * (-math.log(1000.0) / max(1, half - 1)))
    angles = values[:, None].float() * frequencies[None] * 1000.0
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU, in place where no gradient needs the input (inference): one image-sized buffer less."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


class PixelNorm(nn.Module):
    """Normalise each pixel's channel vector (a per-pixel LayerNorm): local, so tile-safe.

    It runs as one fused layer_norm over the channel axis, which is the innermost axis of a
    channels-last tensor; for a batch of one, a per-channel scale and shift (the time-and-level
    modulation) fold into the same kernel.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W); scale and shift (B, C, 1, 1): the result is norm(x) * (1 + scale) + shift."""
        channels = x.shape[1]
        weight, bias = self.weight.view(channels), None
        if scale is not None and shift is not None and x.shape[0] == 1:
            weight, bias = weight * (1 + scale.view(channels)), shift.view(channels)
            scale = shift = None
        # in the input's own precision: under autocast, bfloat16 activations stay bfloat16 (the
        # kernel accumulates in float32) rather than making a float32 copy both ways
        with torch.autocast(x.device.type, enabled=False):
            normed = F.layer_norm(x.permute(0, 2, 3, 1), (channels,), weight.to(x.dtype),
                                  None if bias is None else bias.to(x.dtype), eps=1e-6).permute(0, 3, 1, 2)
        if scale is not None and shift is not None:
            normed = normed * (1 + scale) + shift
        return normed


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions; the time-and-level embedding scales and shifts the middle."""

    def __init__(self, in_channels: int, out_channels: int, embedding: int) -> None:
        super().__init__()
        self.norm_in = PixelNorm(in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.modulation = nn.Linear(embedding, 2 * out_channels)
        self.norm_out = PixelNorm(out_channels)
        self.conv_out = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(silu(self.norm_in(x)))
        scale, shift = self.modulation(embedding)[:, :, None, None].chunk(2, dim=1)
        h = self.norm_out(h, scale, shift)
        return self.skip(x) + self.conv_out(silu(h))


class ResidualUNet(nn.Module):
    """The U-Net of the restoration filter and of the diffusion decoder: from the base
    reconstruction (and, for diffusion, the noisy residual and its time), conditioned on the
    rate level, it predicts the residual to add. Pixels are folded 2x2 into channels first."""

    def __init__(self, config: ResidualUNetConfig = ResidualUNetConfig()) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.embed = nn.Sequential(
            nn.Linear(2 * config.embedding, config.embedding), nn.SiLU(), nn.Linear(config.embedding, config.embedding)
        )
        self.conv_in = nn.Conv2d(6 * 4, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for index, width in enumerate(widths):
            self.down_blocks.append(ResidualBlock(width, width, config.embedding))
            if index + 1 < len(widths):
                self.downsample.append(nn.Conv2d(width, widths[index + 1], 3, stride=2, padding=1))
        self.middle = ResidualBlock(widths[-1], widths[-1], config.embedding)
        self.up_blocks = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for index in range(len(widths) - 1, 0, -1):
            self.upsample.append(nn.Conv2d(widths[index], widths[index - 1] * 4, 3, padding=1))
            self.up_blocks.append(ResidualBlock(2 * widths[index - 1], widths[index - 1], config.embedding))
        # Blocks beyond the first at each resolution, kept apart so that a model with one block
        # loads unchanged; each starts as the identity, so `deepened` preserves the function.
        self.deeper_down = nn.ModuleList(self._extra_blocks(width, config) for width in widths)
        self.deeper_middle = self._extra_blocks(widths[-1], config)
        self.deeper_up = nn.ModuleList(
            self._extra_blocks(widths[index - 1], config) for index in range(len(widths) - 1, 0, -1)
        )
        self.conv_out = nn.Conv2d(widths[0], 3 * 4, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # starts by predicting no residual: the base image
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _extra_blocks(width: int, config: ResidualUNetConfig) -> nn.ModuleList:
        return nn.ModuleList(ResidualBlock(width, width, config.embedding) for _ in range(config.blocks - 1))

    def deepened(self, blocks: int) -> ResidualUNet:
        """The same function with `blocks` blocks per resolution: the added blocks start as
        the identity (their last convolution is zero), so training continues from here."""
        if blocks < self.config.blocks:
            raise ValueError(f"cannot deepen a U-Net of {self.config.blocks} blocks to {blocks}")
        deeper = ResidualUNet(replace(self.config, blocks=blocks))
        missing, unexpected = deeper.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(key.startswith("deeper_") for key in missing)
        return deeper

    @property
    def receptive_radius(self) -> int:
        """How far (pixels, each side) an output pixel can see: tiles need a margin this wide.
        Each 3x3 convolution adds its grid's stride; the size multiple covers the phases of
        the pixel (un)shuffles and strided convolutions."""
        strides = [2 ** (index + 1) for index in range(len(self.config.widths))]
        per_resolution = 2 * self.config.blocks  # 3x3 convolutions in each resolution's blocks
        down = sum(per_resolution * stride for stride in strides) + sum(strides[:-1])
        middle = per_resolution * strides[-1]
        up = sum(strides[1:]) + sum(per_resolution * stride for stride in strides[:-1])
        return 2 * strides[0] + down + middle + up + self.size_multiple

    def tile_margin(self, at_least: int) -> int:
        """A tile margin beyond the receptive field, on the grid of the size multiple (so every
        tile sees the same phase of the strided layers and no seam shows)."""
        multiple = self.size_multiple
        return max(at_least, -(-self.receptive_radius // multiple) * multiple)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** len(self.config.widths)

    def forward(
        self, noisy_residual: torch.Tensor, time: torch.Tensor, base: torch.Tensor, level: torch.Tensor
    ) -> torch.Tensor:
        """noisy_residual, base: (B, 3, H, W); time in [0, 1] and level: (B,). Levels below 1
        (the base codec's extrapolated ones) are seen as 1, the lowest the U-Net was trained on."""
        level = level.clamp(min=1.0)
        embedding = self.embed(
            torch.cat(
                [
                    sinusoidal_embedding(time, self.config.embedding),
                    sinusoidal_embedding(level / self.config.max_level, self.config.embedding),
                ],
                dim=1,
            )
        )
        # the (un)shuffles run on plain tensors, the layers between in the input's memory format
        memory_format = torch.channels_last if base.is_contiguous(memory_format=torch.channels_last) and \
            not base.is_contiguous() else torch.contiguous_format
        x = F.pixel_unshuffle(torch.cat([noisy_residual, base * 2 - 1], dim=1).contiguous(), 2)
        x = self.conv_in(x.contiguous(memory_format=memory_format))
        skips = []
        for index, block in enumerate(self.down_blocks):
            x = block(x, embedding)
            for extra in self.deeper_down[index]:
                x = extra(x, embedding)
            if index < len(self.downsample):
                skips.append(x)
                x = self.downsample[index](x)
        x = self.middle(x, embedding)
        for extra in self.deeper_middle:
            x = extra(x, embedding)
        for upsample, block, extras in zip(self.upsample, self.up_blocks, self.deeper_up, strict=True):
            x = F.pixel_shuffle(upsample(x), 2)
            x = block(torch.cat([x, skips.pop()], dim=1), embedding)
            for extra in extras:
                x = extra(x, embedding)
        return F.pixel_shuffle(self.conv_out(silu(x)).contiguous(), 2)
