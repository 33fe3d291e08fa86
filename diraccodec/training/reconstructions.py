"""Training crops beside the frozen base codec's reconstructions of them.

The decoder stages after the base (the diffusion decoder, the restoration filter) learn from
what the decoder really shows: each crop gets a random fractional rate level and the base
codec reconstructs it with hard quantisation, exactly as at decode time. The crops are cut
and reconstructed on the training device, batch by batch, in float32 whatever the autocast
(on a GPU, not TF32, which the trained model's own steps use).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TypeVar

import torch
from rich.console import Console

from diraccodec.codec.base_codec import BaseWeights
from diraccodec.codec.hyperprior import MultiRateHyperprior
from diraccodec.compute import full_float32
from diraccodec.errors import DiracError
from diraccodec.modelfiles import load_base_weights
from diraccodec.restoration.filter import RestorationFilter
from diraccodec.restoration.unet import ResidualUNetConfig
from diraccodec.training.crops import CropSampler, check_whole_blocks
from diraccodec.training.loop import LoopOptions, TrainingRun, check_before_work

Frozen = TypeVar("Frozen", bound=torch.nn.Module)


def begin_unet_training(options: LoopOptions, patch_size: int, base_weights: Path) -> BaseWeights:
    """What the U-Net trainings (restoration, diffusion) do before their model: check the crops'
    size and the run's place, device and budget, seed torch, and load the base codec whose
    reconstructions they learn from."""
    check_whole_blocks(patch_size)
    check_before_work(options)
    torch.manual_seed(options.seed)
    return load_base_weights(Path(base_weights).resolve())


def check_unet_levels(config: ResidualUNetConfig, top_level: int) -> None:
    """A U-Net conditioned on another number of levels would misread every crop's level."""
    if config.max_level != top_level:
        raise DiracError(f"the U-Net knows {config.max_level:g} levels, the base codec {top_level}")


def note_base_change(run: TrainingRun, base_weights_id: bytes, console: Console) -> None:
    """A resumed state that learnt from another base's reconstructions goes on as a fine-tune."""
    trained_on = run.state.metadata.get("base_weights_id")
    if trained_on and trained_on != base_weights_id.hex():
        console.print(f"note: the saved state was trained on base {trained_on}; continuing on "
                      f"{base_weights_id.hex()} (fine-tuning)")


def _frozen_copy(model: Frozen, run: TrainingRun) -> Frozen:
    """The model on the run's device and memory layout, leaving the (cached, shared) original as it is."""
    frozen = copy.deepcopy(model).to(run.device).eval().requires_grad_(False)
    return frozen.to(memory_format=torch.channels_last) if run.channels_last else frozen


class ReconstructedCrops:
    def __init__(self, folders: tuple[Path, ...], patch_size: int, batch_size: int, base_model: MultiRateHyperprior,
                 run: TrainingRun, levels: tuple[float, float], console: Console,
                 restoration: RestorationFilter | None = None) -> None:
        """restoration: a filter applied to the reconstructions (8-bit in, 8-bit out), for a
        stage that works on its output."""
        console.print(f"loading training images from {', '.join(map(str, folders))}")
        self.sampler = CropSampler(folders, patch_size, generator=run.generator, device=run.device,
                                   channels_last=run.channels_last)
        console.print(f"{self.sampler.image_count} images")
        self.base_model = _frozen_copy(base_model, run)
        self.restoration = _frozen_copy(restoration, run) if restoration is not None else None
        self.run, self.levels, self.batch_size = run, levels, batch_size
        self.pixels_per_step = batch_size * patch_size**2
        self.metadata = {"batch_size": batch_size, "patch_size": patch_size, "device": str(run.device),
                         "data": [str(p) for p in folders]}

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(crops, their base reconstructions, their levels 1..L) for one batch."""
        batch = self.sampler.batch(self.batch_size)
        lowest, highest = self.levels
        generator = self.run.generator
        levels = lowest + torch.rand(self.batch_size, generator=generator, device=generator.device) * (highest - lowest)
        # as the decoder runs them (Compute.kernels): float32, not the TF32 the trained model's steps use
        with torch.no_grad(), torch.autocast(self.run.device.type, enabled=False), full_float32():
            base = self.base_model.reconstruct(batch, level_index=levels - 1)
            if self.restoration is not None:
                base = self.restoration.restore(base, levels).clamp(0, 1).mul(255).round().div(255)
        return batch, base, levels
