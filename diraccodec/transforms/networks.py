"""The base codec's four transforms (Balle et al. 2018): analysis and synthesis between
pixels and latents, hyper-analysis and hyper-synthesis between latents and the side
information that predicts each latent's mean and scale. Plain convolution stacks with GDN;
the probability models that price their outputs live in `diraccodec.entropy`."""

from __future__ import annotations

from torch import nn

from diraccodec.transforms.layers import GDN, conv_down, conv_same, conv_up

# The latent grid is 1/16 of the image, the hyper-latent grid 1/64.
LATENT_STRIDE = 16
HYPER_STRIDE = 64


class AnalysisTransform(nn.Sequential):
    def __init__(self, channels: int, latent_channels: int) -> None:
        super().__init__(
            conv_down(3, channels),
            GDN(channels),
            conv_down(channels, channels),
            GDN(channels),
            conv_down(channels, channels),
            GDN(channels),
            conv_down(channels, latent_channels),
        )


class SynthesisTransform(nn.Sequential):
    def __init__(self, channels: int, latent_channels: int) -> None:
        super().__init__(
            conv_up(latent_channels, channels),
            GDN(channels, inverse=True),
            conv_up(channels, channels),
            GDN(channels, inverse=True),
            conv_up(channels, channels),
            GDN(channels, inverse=True),
            conv_up(channels, 3),
        )


class HyperAnalysis(nn.Sequential):
    def __init__(self, channels: int, latent_channels: int) -> None:
        super().__init__(
            conv_same(latent_channels, channels),
            nn.LeakyReLU(),
            conv_down(channels, channels),
            nn.LeakyReLU(),
            conv_down(channels, channels),
        )


class HyperSynthesis(nn.Sequential):
    """Predicts the mean and the scale of every latent from the hyper-latents.

    At coding time it runs in fixed point (`diraccodec.entropy.fixed_point`; files of format
    version 1 in float64 on the CPU), so that the encoder and the decoder derive bit-identical
    entropy tables on any device.
    """

    def __init__(self, channels: int, latent_channels: int) -> None:
        super().__init__(
            conv_up(channels, channels),
            nn.LeakyReLU(),
            conv_up(channels, channels * 3 // 2),
            nn.LeakyReLU(),
            conv_same(channels * 3 // 2, latent_channels * 2),
        )
