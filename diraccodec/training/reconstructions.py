"""Training crops beside the frozen base codec's reconstructions of them.

The decoder stages after the base (the diffusion decoder, the restoration filter) learn from
what the decoder really shows: each crop gets a random fractional rate level and the base
codec reconstructs it with hard quantisation, exactly as at decode time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from diraccodec.codec.hyperprior import MultiRateHyperprior
from diraccodec.restoration.filter import RestorationFilter
from diraccodec.training.data import CropSampler
from diraccodec.training.loop import Session


class ReconstructedCrops:
    def __init__(self, folders: tuple[Path, ...], patch_size: int, batch_size: int, base_model: MultiRateHyperprior,
                 session: Session, levels: tuple[float, float], console: Console,
                 restoration: RestorationFilter | None = None) -> None:
        """restoration: a filter applied to the reconstructions (8-bit in, 8-bit out), for a
        stage that works on its output."""
        console.print(f"loading training images from {', '.join(map(str, folders))}")
        self.sampler = CropSampler(folders, patch_size, generator=session.generator, device=session.device)
        self.base_model = base_model.to(session.device)
        self.restoration = restoration.to(session.device).eval().requires_grad_(False) if restoration else None
        self.session, self.levels, self.batch_size = session, levels, batch_size
        self.metadata = {"batch_size": batch_size, "patch_size": patch_size, "device": str(session.device),
                         "data": [str(p) for p in folders]}

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(crops, their base reconstructions, their levels 1..L) for one batch."""
        batch = self.sampler.batch(self.batch_size)
        lowest, highest = self.levels
        levels = lowest + torch.rand(self.batch_size, generator=self.session.generator) * (highest - lowest)
        levels = levels.to(self.session.device)
        with torch.no_grad():
            base = self.base_model.reconstruct(batch, levels - 1)
            if self.restoration is not None:
                base = self.restoration.restore(base, levels).clamp(0, 1).mul(255).round().div(255)
        return batch, base, levels
