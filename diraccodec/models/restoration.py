"""The restoration filter: a deterministic correction of the base reconstruction.

The base codec's synthesis is small and briefly trained; one pass of a residual U-Net over
its output, conditioned on the rate level and trained for squared error alone, recovers
part of what it misses (sharper edges, less ringing). The bitstream does not change: the
filter is part of decoding at 0 steps. It is the diffusion decoder's U-Net run once at a
fixed time with no noisy residual, so it can start from the diffusion decoder's weights,
whose first prediction already does much of this.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from diraccodec.models.residual_unet import ResidualUNet, ResidualUNetConfig

# The U-Net's output is in units of 0.1 of the pixel range, as the diffusion decoder's is.
OUTPUT_SCALE = 0.1
# The diffusion time it sees. The diffusion decoder's prediction from no noise at this time
# was the best starting point of those measured (0.1 and 0.4, on BSDS500 crops).
FIXED_TIME = 0.1


class RestorationFilter(nn.Module):
    def __init__(self, unet: ResidualUNet) -> None:
        super().__init__()
        self.unet = unet

    @property
    def config(self) -> ResidualUNetConfig:
        return self.unet.config

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    def forward(self, base: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """base (B, 3, H, W) in [0, 1], level (B,) -> the correction to add, in pixel units."""
        time = torch.full((base.shape[0],), FIXED_TIME, device=base.device)
        return self.unet(torch.zeros_like(base), time, base, level) * OUTPUT_SCALE

    def restore(self, base: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The restored image, unclamped, for a base of any size (padded to the U-Net's multiple)."""
        height, width = base.shape[-2:]
        padded = F.pad(base, (0, -width % self.size_multiple, 0, -height % self.size_multiple), mode="replicate")
        return base + self(padded, level)[..., :height, :width]
