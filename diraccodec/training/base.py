"""Training of the multi-rate base codec.

Each sample in a batch gets its own random rate level; the loss at that level is
lambda * 255^2 * MSE + bpp. Runs on CPU or CUDA, saves its state every few minutes and
resumes it (model, Adam moments, data and noise RNG); a resumed run keeps its state's size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
from diraccodec.compute import thread_count_restored
from diraccodec.training.checkpoint import TrainingState, load_checkpoint, load_checkpoint_metadata, state_exists
from diraccodec.training.crops import CropSampler
from diraccodec.training.loop import LoopOptions, run_loop, start_run

DEFAULT_TRAIN_DATA = Path("../shared/data/train")


@dataclass
class BaseTrainingOptions(LoopOptions):
    data: tuple[Path, ...] = (DEFAULT_TRAIN_DATA,)
    batch_size: int = 8
    patch_size: int = 128
    channels: int = HyperpriorConfig.channels
    latent_channels: int = HyperpriorConfig.latent_channels


def rate_distortion_loss(
    model: MultiRateHyperprior, batch: torch.Tensor, levels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Loss, bpp and PSNR, each averaged over the batch."""
    result = model(batch, levels.float())
    pixels = batch.shape[-1] * batch.shape[-2]
    bpp = (result.bits_latent + result.bits_hyper) / pixels
    mse = (result.reconstruction - batch).pow(2).flatten(1).mean(1)
    lambdas = torch.tensor(model.config.lambdas, device=batch.device)[levels]
    loss = (lambdas * 255**2 * mse + bpp).mean()
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()
    return {"loss": loss, "bpp": bpp.mean().detach(), "psnr": psnr.detach()}


def hyperprior_config(fields: dict[str, Any]) -> HyperpriorConfig:
    """The base codec's configuration as a state's metadata records it."""
    return HyperpriorConfig(fields["channels"], fields["latent_channels"], tuple(fields["lambdas"]))


@thread_count_restored()
def train_base(options: BaseTrainingOptions, console: Console | None = None) -> TrainingState:
    console = console or Console(stderr=True)
    torch.manual_seed(options.seed)
    config = HyperpriorConfig(options.channels, options.latent_channels)
    if state_exists(options.checkpoint):
        config = hyperprior_config(load_checkpoint_metadata(options.checkpoint).metadata["config"])
    run = start_run(MultiRateHyperprior(config), options, console)
    console.print(f"loading training images from {', '.join(map(str, options.data))}")
    sampler = CropSampler(options.data, options.patch_size, generator=run.generator, device=run.device,
                          channels_last=run.channels_last)
    console.print(f"{sampler.image_count} images; model N={config.channels} M={config.latent_channels}")
    run.state.metadata.update(
        {
            "config": asdict(config),
            "batch_size": options.batch_size,
            "patch_size": options.patch_size,
            "device": str(run.device),
            "data": [str(p) for p in options.data],
        }
    )

    def next_loss() -> dict[str, torch.Tensor]:
        batch = sampler.batch(options.batch_size)
        levels = torch.randint(config.num_levels, (options.batch_size,), generator=run.generator, device=run.device)
        return rate_distortion_loss(run.step_model, batch, levels)

    return run_loop(run, options, next_loss, console, options.batch_size * options.patch_size**2)


def export_checkpoint(checkpoint: Path, output: Path) -> None:
    """Inference weights from a training state, recording how long it trained."""
    from diraccodec.modelfiles import export_base_weights

    model = MultiRateHyperprior(hyperprior_config(load_checkpoint_metadata(checkpoint).metadata["config"]))
    state = load_checkpoint(checkpoint, model, None, None, prefer_average=True)
    info = {"steps": state.step, "training_hours": round(state.seconds / 3600, 3), **state.metadata}
    export_base_weights(model, output, info)
