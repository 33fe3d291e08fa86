"""Training of the multi-rate base codec.

Each sample in a batch gets its own random rate level; the loss at that level is
lambda * 255^2 * MSE + bpp. Runs on CPU or CUDA, checkpoints every few minutes and
resumes exactly (model, Adam moments, data and noise RNG).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from diraccodec.models.hyperprior import HyperpriorConfig, MultiRateHyperprior
from diraccodec.training.checkpoint import (
    TrainingState,
    load_checkpoint,
    load_checkpoint_metadata,
    save_checkpoint,
)
from diraccodec.training.data import CropSampler


@dataclass
class BaseTrainingOptions:
    data: tuple[Path, ...]
    checkpoint: Path
    steps: int
    batch_size: int = 8
    patch_size: int = 128
    learning_rate: float = 2e-4
    decay_from: float = 0.8  # fraction of `steps` after which the rate decays to 1/10
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    channels: int = HyperpriorConfig.channels
    latent_channels: int = HyperpriorConfig.latent_channels


def learning_rate_at(step: int, options: BaseTrainingOptions) -> float:
    start = options.decay_from * options.steps
    if step < start:
        return options.learning_rate
    progress = min(1.0, (step - start) / max(1.0, options.steps - start))
    return options.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def rate_distortion_loss(
    model: MultiRateHyperprior, batch: torch.Tensor, levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, bpp, psnr), each averaged over the batch."""
    result = model(batch, levels.float())
    pixels = batch.shape[-1] * batch.shape[-2]
    bpp = (result.bits_latent + result.bits_hyper) / pixels
    mse = (result.reconstruction - batch).pow(2).flatten(1).mean(1)
    lambdas = torch.tensor(model.config.lambdas, device=batch.device)[levels]
    loss = (lambdas * 255**2 * mse + bpp).mean()
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()
    return loss, bpp.mean(), psnr


def train_base(options: BaseTrainingOptions, console: Console | None = None) -> TrainingState:
    console = console or Console(stderr=True)
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    device = torch.device(options.device)
    config = HyperpriorConfig(options.channels, options.latent_channels)
    model = MultiRateHyperprior(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    generator = torch.Generator().manual_seed(options.seed)
    state = TrainingState(step=0, seconds=0.0, metadata={})
    if options.checkpoint.exists():
        state = load_checkpoint(options.checkpoint, model, optimizer, generator)
        console.print(f"resumed from {options.checkpoint} at step {state.step}")
    console.print(f"loading training images from {', '.join(map(str, options.data))}")
    sampler = CropSampler(options.data, options.patch_size, generator=generator)
    console.print(f"{len(sampler.images)} images; model N={config.channels} M={config.latent_channels}")
    state.metadata.update(
        {
            "config": asdict(config),
            "batch_size": options.batch_size,
            "patch_size": options.patch_size,
            "device": str(device),
            "data": [str(p) for p in options.data],
        }
    )

    last_save = time.monotonic()
    window: list[tuple[float, float, float]] = []
    step_started = time.monotonic()
    while state.step < options.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(state.step, options)
        batch = sampler.batch(options.batch_size).to(device)
        levels = torch.randint(config.num_levels, (options.batch_size,), generator=generator).to(device)
        loss, bpp, psnr = rate_distortion_loss(model, batch, levels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state.step += 1
        now = time.monotonic()
        state.seconds += now - step_started
        step_started = now
        window.append((loss.item(), bpp.item(), psnr.item()))
        if state.step % options.log_every == 0 or state.step == options.steps:
            mean = [sum(v) / len(window) for v in zip(*window, strict=True)]
            console.print(
                f"step {state.step}/{options.steps}  loss {mean[0]:.4f}  bpp {mean[1]:.3f}  "
                f"psnr {mean[2]:.2f} dB  lr {optimizer.param_groups[0]['lr']:.2e}  "
                f"{state.seconds / 3600:.2f} h"
            )
            sys.stderr.flush()
            window.clear()
        if now - last_save > options.checkpoint_minutes * 60 or state.step == options.steps:
            save_checkpoint(options.checkpoint, model, optimizer, generator, state)
            last_save = time.monotonic()
    return state


def export_checkpoint(checkpoint: Path, output: Path) -> None:
    """Inference weights from a training checkpoint, recording how long it trained."""
    from diraccodec.weights import export_base_weights

    probe = load_checkpoint_metadata(checkpoint)
    config = HyperpriorConfig(**{**probe.metadata["config"], "lambdas": tuple(probe.metadata["config"]["lambdas"])})
    model = MultiRateHyperprior(config)
    state = load_checkpoint(checkpoint, model, None, None)
    info = {"steps": state.step, "training_hours": round(state.seconds / 3600, 3), **state.metadata}
    export_base_weights(model, output, info)
