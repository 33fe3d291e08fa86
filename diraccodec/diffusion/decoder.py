"""The diffusion stage of decoding: base reconstruction in, realistic image out."""

from __future__ import annotations

import numpy as np
import torch

from diraccodec.compute import Compute
from diraccodec.diffusion.detail_map import DetailMap
from diraccodec.diffusion.finishing import Finishing, FinishingSettings, finish_in_bands
from diraccodec.diffusion.sampler import SampledResidual, SamplerSettings, sample_residual
from diraccodec.options import Progress
from diraccodec.restoration.filter import Restorer
from diraccodec.restoration.unet import ResidualUNet

DEFAULT_SEED = 0
# The finishing works in bands of about this side squared pixels on a CPU (16 times more on a
# GPU, as the networks' tiles): rows of 1 megapixel over the width.
FINISH_BAND_SIDE = 1024


class DiffusionDecoder:
    """The decoder's last stage: a trained U-Net with its sampler and finishing settings,
    adding at decode time, in as many steps as asked, the detail the base reconstruction lacks."""

    def __init__(self, model: ResidualUNet, sampler: SamplerSettings, finishing: FinishingSettings,
                 compute: Compute = Compute(), restorer: Restorer | None = None) -> None:
        """restorer: the filter whose output the model was trained to enhance (None: it
        enhances the base synthesis itself)."""
        self.compute = compute
        self.device = compute.device
        self.model = compute.prepare_for_autocast(model)  # sample_residual runs it under autocast
        self.sampler = sampler
        self.finishing = finishing
        self.restorer = restorer

    def enhance(self, base_rgb: np.ndarray, level: float, steps: int, seed: int | None = None,
                detail_map: DetailMap | None = None, progress: Progress | None = None) -> np.ndarray:
        """(H, W, 3) uint8 base reconstruction -> (H, W, 3) uint8 after `steps` sampling steps,
        with the file's detail map where it has one and the level uses it; `progress(done,
        steps)` hears of each step."""
        if steps <= 0:
            return base_rgb
        base_rgb, sampled = self.sample(base_rgb, level, steps, seed, progress)
        return self.finished_image(base_rgb, sampled, self.finishing.at(level, steps), detail_map)

    def sample(self, base_rgb: np.ndarray, level: float, steps: int, seed: int | None = None,
               progress: Progress | None = None) -> tuple[np.ndarray, SampledResidual]:
        """The base (as the model sees it) and the sampling's parts before the finishing."""
        base_rgb = self.conditioning(base_rgb, level)
        sampled = sample_residual(self.model, self.pixels(base_rgb), level, steps,
                                  DEFAULT_SEED if seed is None else seed, self.sampler, self.compute, progress)
        return base_rgb, sampled

    def conditioning(self, base_rgb: np.ndarray, level: float) -> np.ndarray:
        """The image the model enhances: the base synthesis, or the filter's output where the
        model was trained on that. (The encoder's detail map is measured against the base
        synthesis, whichever this is.)"""
        return base_rgb if self.restorer is None else self.restorer.restore(base_rgb, level)

    def finished_image(self, base_rgb: np.ndarray, sampled: SampledResidual, finishing: Finishing,
                       detail_map: DetailMap | None = None) -> np.ndarray:
        """The base plus the finished residual, as (H, W, 3) uint8, made band by band (the
        sampling's parts are spent): beside the sampling's parts the memory holds one band's
        finishing, not the whole image's."""
        image = np.empty_like(base_rgb)

        def write(first: int, end: int, residual: torch.Tensor) -> None:
            image[first:end] = self.to_image(base_rgb[first:end], residual)

        finish_in_bands(sampled, finishing, detail_map, write, self.compute.tile(FINISH_BAND_SIDE) ** 2, consume=True)
        return image

    def pixels(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, H, W) uint8 on the decoder's device (on a CPU a view of
        the array, copied only where it is read-only or not contiguous)."""
        return torch.from_numpy(np.require(rgb, np.uint8, ["C", "W"])).permute(2, 0, 1)[None].to(self.device)

    def to_image(self, base_rgb: np.ndarray, residual: torch.Tensor) -> np.ndarray:
        """(H, W, 3) uint8 base plus a (1, 3, H, W) residual in [0, 1] units -> (H, W, 3) uint8."""
        image = (self.pixels(base_rgb).float().div_(255) + residual).clamp_(0, 1)[0]
        return image.mul_(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
