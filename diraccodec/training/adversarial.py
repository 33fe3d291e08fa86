"""An adversarial term for the diffusion decoder's training (off unless asked for).

A critic sees an image beside the base reconstruction it was decoded from and learns to tell
the original photo from the decoder's prediction; the decoder learns to make predictions the
critic takes for photos. Squared error and LPIPS reward the mean of the plausible details,
which looks smooth; the critic rewards one plausible detail, which is what the generative
codecs that lead on LPIPS and FID train with (HiFiC, MS-ILLM).

The critic is a small convolutional patch classifier with spectral normalisation, conditioned
by concatenation on the base reconstruction. Both terms are the logistic (non-saturating)
losses. They come out of one backward pass: the decoder's term is computed with the critic's
parameters frozen and the critic's term on a detached prediction, so one optimiser steps
both without either term reaching the other's parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from diraccodec.restoration.unet import ResidualUNet, ResidualUNetConfig


@dataclass(frozen=True)
class CriticConfig:
    widths: tuple[int, ...] = (64, 128, 256)  # each a stride-2 4x4 convolution: a patch of about 46 pixels

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> CriticConfig:
        return cls(tuple(fields["widths"]))


class PatchCritic(nn.Module):
    """A logit per patch: photo (positive) or decoded (negative), given the base reconstruction."""

    def __init__(self, config: CriticConfig = CriticConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = 6  # the image and the base reconstruction
        for width in config.widths:
            layers += [spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels = width
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, padding=1)))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([image, base], dim=1) * 2 - 1)


class CriticisedUNet(nn.Module):
    """The diffusion U-Net with its critic beside it, so that one training state, one optimiser
    and one weight average hold both. Calling it calls the U-Net; export keeps the U-Net alone."""

    def __init__(self, unet: ResidualUNet, critic: PatchCritic) -> None:
        super().__init__()
        self.unet, self.critic = unet, critic

    @property
    def config(self) -> ResidualUNetConfig:
        return self.unet.config

    @classmethod
    def around(cls, unet: ResidualUNet, record: dict[str, Any] | None = None) -> CriticisedUNet:
        """`unet` beside a new critic, of the configuration a training state records where given."""
        return cls(unet, PatchCritic(CriticConfig.from_fields(record) if record else CriticConfig()))

    def forward(self, *arguments: torch.Tensor) -> torch.Tensor:
        return self.unet(*arguments)

    def critic_record(self) -> dict[str, Any]:
        return asdict(self.critic.config)


def adversarial_terms(
    critic: PatchCritic, photo: torch.Tensor, decoded: torch.Tensor, base: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the decoder's term, the critic's term), to be summed into one loss."""
    critic.requires_grad_(False)  # the decoder's term moves the decoder alone
    decoder_term = F.softplus(-critic(decoded, base)).mean()
    critic.requires_grad_(True)
    critic_term = F.softplus(-critic(photo, base)).mean() + F.softplus(critic(decoded.detach(), base)).mean()
    return decoder_term, critic_term
