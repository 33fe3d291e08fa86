"""Training of the restoration filter on the frozen base codec's reconstructions.

As for the diffusion decoder, each crop gets a random rate level and the base codec
reconstructs it with hard quantisation, exactly as the decoder does. The loss is each
crop's squared error after the filter divided by that of the base reconstruction, so that
every level counts alike (a dB of PSNR is worth the same share of error at any level).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from diraccodec.compute import thread_count_restored
from diraccodec.console import plain_console
from diraccodec.modelfiles import (
    DEFAULT_BASE_WEIGHTS,
    DEFAULT_DIFFUSION_WEIGHTS,
    export_restoration_weights,
    load_unet_weights,
)
from diraccodec.options import TRAINING_PHOTOS
from diraccodec.restoration.filter import RestorationFilter
from diraccodec.restoration.unet import ResidualUNet, ResidualUNetConfig
from diraccodec.training.checkpoint import (
    TrainingState,
    export_info,
    load_checkpoint,
    load_checkpoint_metadata,
    state_exists,
)
from diraccodec.training.loop import LoopOptions, run_loop, start_run
from diraccodec.training.reconstructions import (
    ReconstructedCrops,
    begin_unet_training,
    check_unet_levels,
    note_base_change,
)

# Floor of a crop's base MSE (pixel range 1): flat crops with almost no error must not
# dominate a batch. An RMS error of 0.1% of the range is far below any level's.
BASE_MSE_FLOOR = 1e-6


@dataclass
class RestorationTrainingOptions(LoopOptions):
    data: tuple[Path, ...] = (TRAINING_PHOTOS,)
    base_weights: Path = DEFAULT_BASE_WEIGHTS
    batch_size: int = 8
    patch_size: int = 128
    # A fresh run starts from this diffusion decoder's or restoration filter's U-Net (None: from
    # scratch, which starts as the identity: the output layer is zero).
    start_from: Path | None = DEFAULT_DIFFUSION_WEIGHTS


def restoration_loss(
    restorer: RestorationFilter, batch: torch.Tensor, base: torch.Tensor, levels: torch.Tensor
) -> dict[str, torch.Tensor]:
    restored = (base + restorer(base, levels)).clamp(0, 1)
    error = (restored - batch).pow(2).mean(dim=(1, 2, 3))
    base_error = (base - batch).pow(2).mean(dim=(1, 2, 3)).clamp_min(BASE_MSE_FLOOR)
    ratio = error / base_error
    # the mean PSNR gain in dB over the batch, to watch
    gain = -10 * torch.log10(ratio.detach().clamp_min(1e-12)).mean()
    return {"loss": ratio.mean(), "psnr_gain": gain}


@thread_count_restored()
def train_restoration(options: RestorationTrainingOptions, console: Console | None = None) -> TrainingState:
    """Train the restoration filter, which brings the base synthesis nearer the photo (the
    0-step image); a state in options.checkpoint is resumed."""
    console = plain_console(console)
    base_weights = begin_unet_training(options, options.patch_size, options.base_weights)
    top_level = base_weights.model.config.num_levels
    config = ResidualUNetConfig(max_level=float(top_level))
    starting_unet = None
    if state_exists(options.checkpoint):
        config = ResidualUNetConfig.from_fields(load_checkpoint_metadata(options.checkpoint).metadata["config"])
    elif options.start_from is not None:
        starting_unet = load_unet_weights(options.start_from)
        config = starting_unet.config
    check_unet_levels(config, top_level)
    unet = ResidualUNet(config)
    if starting_unet is not None:
        unet.load_state_dict(starting_unet.state_dict())
        console.print(f"starting from the U-Net of {options.start_from}")
    restorer = RestorationFilter(unet)
    run = start_run(restorer, options, console, from_weights=starting_unet is not None)
    note_base_change(run, base_weights.weights_id, console)
    crops = ReconstructedCrops(options.data, options.patch_size, options.batch_size, base_weights.model, run,
                               (1.0, float(top_level)), console)
    run.state.metadata.update({
        "config": asdict(restorer.config),
        "base_weights_id": base_weights.weights_id.hex(),
        "kind": "restoration",
        **crops.metadata,
    })
    if not run.state.step:  # what a fresh run started from; a resumed run keeps the record
        run.state.metadata["start_from"] = str(options.start_from) if starting_unet is not None else None

    def next_loss() -> dict[str, torch.Tensor]:
        return restoration_loss(run.step_model, *crops.draw())

    return run_loop(run, options, next_loss, console, crops.pixels_per_step)


def export_restoration_checkpoint(checkpoint: Path, output: Path) -> None:
    metadata = load_checkpoint_metadata(checkpoint).metadata
    restorer = RestorationFilter(ResidualUNet(ResidualUNetConfig.from_fields(metadata["config"])))
    state = load_checkpoint(checkpoint, restorer, None, None, prefer_average=True)
    export_restoration_weights(restorer, bytes.fromhex(metadata["base_weights_id"]), output, export_info(state))
