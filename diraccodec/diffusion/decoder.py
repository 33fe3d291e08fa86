"""The diffusion stage of decoding: base reconstruction in, realistic image out."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from diraccodec.compute import thread_invariant
from diraccodec.diffusion.detail_map import DetailMap
from diraccodec.diffusion.sampler import SampledResidual, SamplerSettings, sample_residual_parts
from diraccodec.restoration.filter import Restorer
from diraccodec.restoration.unet import ResidualUNet

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
        self, base_rgb: np.ndarray, level: float, steps: int, seed: int | None = None, fast: bool = False,
        detail_map: DetailMap | None = None,
    ) -> np.ndarray:
        """(H, W, 3) uint8 base reconstruction -> (H, W, 3) uint8 after `steps` sampling steps,
        with the file's detail map where it has one and the level uses it.

        fast=True keeps oneDNN's convolutions (about 2.5x faster on a CPU), whose summation
        order follows the thread count: the same machine and thread count still give the same
        pixels, but other thread counts may differ by rounding.
        """
        if steps <= 0:
            return base_rgb
        base, sampled = self.sample(base_rgb, level, steps, seed, fast)
        return self.to_image(base, sampled.finished(self.settings.finishing(level, steps), detail_map))

    def uses_detail_map(self, level: float) -> bool:
        """Whether the finishing at this level scales its detail to an encoder's detail map."""
        return self.settings.finishing(level).detail_match > 0

    def sample(
        self, base_rgb: np.ndarray, level: float, steps: int, seed: int | None = None, fast: bool = False
    ) -> tuple[torch.Tensor, SampledResidual]:
        """The base (as the model sees it) and the sampling's parts before the finishing gains
        and kept noise (steps >= 1): scripts/tune_sampler.py varies those without sampling again."""
        base_rgb = self.conditioning(base_rgb, level, fast)
        base = torch.from_numpy(base_rgb.copy()).permute(2, 0, 1)[None].float().div(255).to(self.device)
        with contextlib.nullcontext() if fast else thread_invariant():
            return base, sample_residual_parts(self.model, base, level, steps,
                                               DEFAULT_SEED if seed is None else seed, self.settings)

    def conditioning(self, base_rgb: np.ndarray, level: float, fast: bool = False) -> np.ndarray:
        """The image the model enhances: the base synthesis, or the filter's output where the
        model was trained on that. The encoder measures its detail map against it."""
        return base_rgb if self.restorer is None else self.restorer.restore(base_rgb, level, fast)

    @staticmethod
    def to_image(base: torch.Tensor, residual: torch.Tensor) -> np.ndarray:
        image = (base + residual).clamp(0, 1)[0]
        return image.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
