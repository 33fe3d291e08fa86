"""The restoration stage of decoding at 0 steps: one U-Net pass over the base reconstruction.

The base codec's synthesis is small and briefly trained; one pass of a residual U-Net over
its output, conditioned on the rate level and trained for squared error alone, recovers
part of what it misses (sharper edges, less ringing), so the image stays the most faithful
one the decoder makes. The bitstream does not change. The filter is the diffusion decoder's
U-Net run once at a fixed time with no noisy residual, so it can start from the diffusion
decoder's weights, whose first prediction already does much of this. The shipped diffusion
decoder works from the unfiltered synthesis, on which it was trained; one trained on this
filter's output (`dirac train diffusion --on-restored`) runs the filter first.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diraccodec.compute import Compute
from diraccodec.restoration.unet import RESIDUAL_SCALE, UNET_MARGIN, UNET_TILE, ResidualUNet, ResidualUNetConfig
from diraccodec.transforms.tiling import apply_tiled

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
        time = torch.full((base.shape[0],), FIXED_TIME, device=base.device, dtype=base.dtype)
        return self.unet(torch.zeros_like(base), time, base, level) * RESIDUAL_SCALE

    def restore(self, base: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The restored image, unclamped, for a base of any size (padded to the U-Net's multiple)."""
        height, width = base.shape[-2:]
        padded = F.pad(base, (0, -width % self.size_multiple, 0, -height % self.size_multiple), mode="replicate")
        return base + self(padded, level)[..., :height, :width]


class Restorer:
    """The filter as a decoding stage: 8-bit image in, 8-bit image out, in tiles, where `compute` says."""

    def __init__(self, model: RestorationFilter, compute: Compute = Compute()) -> None:
        self.compute = compute
        self.device = compute.device
        self.model = compute.prepare(model)

    @torch.no_grad()
    def restore(self, base_rgb: np.ndarray, level: float) -> np.ndarray:
        """(H, W, 3) uint8 base reconstruction -> (H, W, 3) uint8 restored.

        Tiles go in and come out as 8-bit pixels, so that beyond one tile's working set the
        memory is that of the 8-bit image (a 50-megapixel photo must decode). It runs in
        float32 in every mode: it sets the fidelity of a 0-step decode.
        """
        level_tensor = torch.tensor([float(level)], device=self.device, dtype=torch.float32)

        def restore_tile(tile: torch.Tensor) -> torch.Tensor:
            restored = self.model.restore(self.compute.tensor(tile).float().div_(255), level_tensor)
            return restored.clamp_(0, 1).mul_(255).round_().to(torch.uint8).cpu()

        # a view of the 8-bit pixels (copied only when read-only, as from a PIL image)
        base = torch.from_numpy(np.require(base_rgb, np.uint8, ["C", "W"])).permute(2, 0, 1)[None]
        with self.compute.kernels():
            restored = apply_tiled(restore_tile, base, Fraction(1), self.compute.tile(UNET_TILE),
                                   self.model.unet.tile_margin(UNET_MARGIN))
        return np.ascontiguousarray(restored[0].permute(1, 2, 0).numpy())
