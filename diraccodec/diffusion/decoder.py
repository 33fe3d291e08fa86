"""The diffusion stage of decoding: base reconstruction in, realistic image out."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from diraccodec.codec import without_onednn
from diraccodec.diffusion.sampler import SampledResidual, SamplerSettings, sample_residual_parts
from diraccodec.models.residual_unet import ResidualUNet
from diraccodec.restoration import Restorer

DEFAULT_SEED = 0


class DiffusionDecoder:
    def __init__(self, model: ResidualUNet, settings: SamplerSettings, device: str | torch.device = "cpu",
                 restorer: Restorer | None = None) -> None:
        """restorer: the filter whose output the model was trained to enhance (None: it
        enhances the base synthesis itself, as the first decoders did)."""
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.settings = settings
        self.restorer = restorer

    def enhance(
        self, base_rgb: np.ndarray, level: float, steps: int, seed: int | None = None, fast: bool = False
    ) -> np.ndarray:
        """(H, W, 3) uint8 base reconstruction -> (H, W, 3) uint8 after `steps` sampling steps.

        fast=True keeps oneDNN's convolutions (about 2.5x faster on a CPU), whose summation
        order follows the thread count: the same machine and thread count still give the same
        pixels, but other thread counts may differ by rounding.
        """
        if steps <= 0:
            return base_rgb
        base, sampled = self.sample(base_rgb, level, steps, seed, fast)
        return self.to_image(base, sampled.finished(self.settings.finishing(level, steps)))

    def sample(
        self, base_rgb: np.ndarray, level: float, steps: int, seed: int | None = None, fast: bool = False
    ) -> tuple[torch.Tensor, SampledResidual]:
        """The base (as the model sees it) and the sampling's parts before the finishing gains
        and kept noise (steps >= 1): scripts/tune_sampler.py varies those without sampling again."""
        if self.restorer is not None:
            base_rgb = self.restorer.restore(base_rgb, level, fast)
        base = torch.from_numpy(base_rgb.copy()).permute(2, 0, 1)[None].float().div(255).to(self.device)
        # the plain kernels sum in the same order with any thread count (see codec.py)
        with contextlib.nullcontext() if fast else without_onednn():
            return base, sample_residual_parts(self.model, base, level, steps,
                                               DEFAULT_SEED if seed is None else seed, self.settings)

    @staticmethod
    def to_image(base: torch.Tensor, residual: torch.Tensor) -> np.ndarray:
        image = (base + residual).clamp(0, 1)[0]
        return image.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
