"""The restoration stage of decoding at 0 steps: one U-Net pass over the base reconstruction.

It sharpens what the small base synthesis blurs, for squared error alone, so the image
stays the most faithful one the decoder makes (docs/restoration.md). The shipped diffusion
decoder works from the unfiltered synthesis, on which it was trained; one trained on this
filter's output (`dirac train diffusion --on-restored`) runs the filter first.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction

import numpy as np
import torch

from diraccodec.models.restoration import RestorationFilter
from diraccodec.models.tiling import apply_tiled
from diraccodec.reproducibility import thread_invariant

TILE = 768  # Kodak-sized images in one pass, larger ones in tiles ...
MARGIN = 96  # ... with at least this margin (more where the U-Net sees further), so no seam shows


class Restorer:
    def __init__(self, model: RestorationFilter, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def restore(self, base_rgb: np.ndarray, level: float, fast: bool = False) -> np.ndarray:
        """(H, W, 3) uint8 base reconstruction -> (H, W, 3) uint8 restored.

        Tiles go in and come out as 8-bit pixels, so that beyond one tile's working set the
        memory is that of the 8-bit image (a 50-megapixel photo must decode). fast=True keeps
        oneDNN's kernels, whose summation order follows the thread count (as for the
        diffusion decoder); by default the pixels are the same with any thread count.
        """
        level_tensor = torch.tensor([float(level)], device=self.device)

        def restore_tile(tile: torch.Tensor) -> torch.Tensor:
            restored = self.model.restore(tile.to(self.device).float().div(255), level_tensor)
            return restored.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()

        # a view of the 8-bit pixels (copied only when read-only, as from a PIL image)
        base = torch.from_numpy(np.require(base_rgb, np.uint8, ["C", "W"])).permute(2, 0, 1)[None]
        with contextlib.nullcontext() if fast else thread_invariant():
            restored = apply_tiled(restore_tile, base, Fraction(1), TILE, self.model.unet.tile_margin(MARGIN))
        return np.ascontiguousarray(restored[0].permute(1, 2, 0).numpy())
