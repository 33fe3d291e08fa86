"""LPIPS v0.1 (Zhang et al. 2018) on AlexNet or VGG16 features, in PyTorch.

Images are in [0, 1]; the metric itself sees them in [-1, 1]. The distance is the sum
over layers of the spatial mean of the learned, channel-weighted squared difference of
unit-normalised features. The VGG16 feature stack doubles as a perceptual training loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from diraccodec.perceptual.weights import perceptual_weights

# (out_channels, kernel, stride, padding, max-pool before this conv) per conv layer
_ALEXNET = ((64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False),
            (256, 3, 1, 1, False))
_VGG16 = tuple((c, 3, 1, 1, pool) for c, pool in (
    (64, False), (64, False), (128, True), (128, False), (256, True), (256, False), (256, False),
    (512, True), (512, False), (512, False), (512, True), (512, False), (512, False)))
# indices of the conv layers whose ReLU outputs LPIPS compares
_TAPS = {"alexnet": (0, 1, 2, 3, 4), "vgg16": (1, 3, 6, 9, 12)}
_LAYOUT = {"alexnet": _ALEXNET, "vgg16": _VGG16}
_POOL = {"alexnet": dict(kernel_size=3, stride=2), "vgg16": dict(kernel_size=2, stride=2)}

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class FeatureStack(nn.Module):
    """The convolutional part of AlexNet or VGG16, returning the tapped ReLU outputs."""

    def __init__(self, network: str) -> None:
        super().__init__()
        self.network = network
        in_channels = 3
        self.features = nn.ModuleList()
        self.pool_before = []
        for out_channels, kernel, stride, padding, pool in _LAYOUT[network]:
            self.features.append(nn.Conv2d(in_channels, out_channels, kernel, stride, padding))
            self.pool_before.append(pool)
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, (conv, pool) in enumerate(zip(self.features, self.pool_before, strict=True)):
            if pool:
                x = F.max_pool2d(x, **_POOL[self.network])
            x = F.relu(conv(x))
            if index in _TAPS[self.network]:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    def __init__(self, network: str = "alexnet") -> None:
        super().__init__()
        self.stack = FeatureStack(network)
        widths = [self.stack.features[i].out_channels for i in _TAPS[network]]
        self.heads = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        self.load_state_dict(perceptual_weights(network))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features of images in [0, 1], shape (B, 3, H, W)."""
        x = ((image * 2 - 1) - self.shift) / self.scale
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in self.stack(x)]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance per image, shape (B,)."""
        total = torch.zeros(a.shape[0], device=a.device)
        for head, fa, fb in zip(self.heads, self.features(a), self.features(b), strict=True):
            total = total + head((fa - fb).pow(2)).mean(dim=(1, 2, 3))
        return total
