"""The restoration stage of decoding at 0 steps: one U-Net pass over the base reconstruction.

It sharpens what the small base synthesis blurs, for squared error alone, so the image
stays the most faithful one the decoder makes (docs/restoration.md). The diffusion decoder
works from the unfiltered synthesis, on which it was trained.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction

import numpy as np
import torch
from torch.nn import functional as F

from diraccodec.codec import rgb_to_tensor, tensor_to_rgb, without_onednn
from diraccodec.models.restoration import RestorationFilter
from diraccodec.models.tiling import apply_tiled

TILE = 768  # Kodak-sized images in one pass, larger ones in tiles ...
MARGIN = 96  # ... with a margin beyond the U-Net's receptive field, so no seam shows


class Restorer:
    def __init__(self, model: RestorationFilter, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def restore(self, base_rgb: np.ndarray, level: float, fast: bool = False) -> np.ndarray:
        """(H, W, 3) uint8 base reconstruction -> (H, W, 3) uint8 restored.

        fast=True keeps oneDNN's kernels, whose summation order follows the thread count (as
        for the diffusion decoder); by default the pixels are the same with any thread count.
        """
        base = rgb_to_tensor(base_rgb, self.device)
        height, width = base.shape[-2:]
        multiple = self.model.size_multiple
        padded = F.pad(base, (0, -width % multiple, 0, -height % multiple), mode="replicate")
        level_tensor = torch.tensor([float(level)], device=self.device)
        with contextlib.nullcontext() if fast else without_onednn():
            correction = apply_tiled(lambda tile: self.model(tile, level_tensor), padded, Fraction(1), TILE, MARGIN)
        return tensor_to_rgb(base + correction[..., :height, :width])
