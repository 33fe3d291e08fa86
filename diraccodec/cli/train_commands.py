"""Training commands (`dirac train ...`): long-running, each resumes from its checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from diraccodec.cli.common import (
    FileName,
    FolderName,
    check_outputs,
    console,
    parse_list,
    reports_errors,
    weights_option,
)
from diraccodec.errors import DiracError, one_line
from diraccodec.options import CONTEXTS, TRAINING_PHOTOS


@click.group()
def train() -> None:
    """Train the models (long-running; each resumes from its checkpoint), and pack, export or count for them."""


training_data_option = click.option(
    "--data", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
    default=[TRAINING_PHOTOS], show_default=True,
    help="A folder of training photos (or packed shards); repeat for several.")


def training_options(
    checkpoint: str, steps: int, batch_size: int = 8, patch_size: int = 128
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every training command takes, with its own checkpoint, step and crop defaults."""
    options = [
        training_data_option,
        click.option("--checkpoint", type=click.Path(path_type=Path), default=Path(checkpoint),
                     show_default=True, help="Resumed from when it exists; written every few minutes."),
        click.option("--steps", type=click.IntRange(1), default=steps, show_default=True, help="Total steps."),
        click.option("--batch-size", type=click.IntRange(1), default=batch_size, show_default=True,
                     help="Crops per step."),
        click.option("--patch-size", type=click.IntRange(64), default=patch_size, show_default=True,
                     help="Side of each square crop, in pixels: a multiple of 64."),
        click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), default=2e-4,
                     show_default=True, help="Adam's learning rate (then a cosine decay over the last fifth)."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                     help="Where to train (long runs belong on a GPU: scripts/train_gpu.py)."),
        click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch."),
        click.option("--checkpoint-minutes", type=click.FloatRange(min=0, min_open=True), default=5.0,
                     show_default=True, help="Minutes between saves of the state."),
        click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Train for this long (wall clock), over 0.25: the last 15 s are kept for the save. The "
                          "step count is then set from the measured speed."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seeds the crops and the initial weights."),
        click.option("--average-decay", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                     help="Keep a moving average of the weights (e.g. 0.999) and export it; 0: none."),
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        command = reports_errors(command)
        for option in reversed(options):
            command = option(command)
        return command

    return apply


@train.command("base")
@training_options("checkpoints/base", 9000)
@click.option("--context", type=click.Choice(CONTEXTS), default=None,
              help="A new run's entropy model: the hyperprior alone, or with a checkerboard context model "
                   "(default: the start's, else none).")
@click.option("--start-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Base weights a new run starts from (a context model they lack starts at zero).")
@click.option("--lambdas", default=None, metavar="L1,...,L8",
              help="A new run's rate-distortion trade-offs, ascending (default: the start's, else the shipped "
                   "ladder); the start's gains are carried over to them.")
@click.option("--freeze-hyperprior", is_flag=True,
              help="A new run keeps its start's hyperprior (but for new latents' means and scales) and trains "
                   "the transforms, gains and context model.")
@click.option("--analysis-channels", type=click.IntRange(min=1), default=None,
              help="A new run's analysis width (default: the start's, else 96); from --start-from a wider "
                   "analysis grows out of the trained one.")
@click.option("--synthesis-channels", type=click.IntRange(min=1), default=None,
              help="A new run's synthesis width, likewise.")
@click.option("--latent-channels", type=click.IntRange(min=1), default=None,
              help="A new run's latent channels, M (default: the start's, else 160); from --start-from the new "
                   "latents start at 0 beside the trained ones.")
def train_base_command(data: tuple[Path, ...], context: str | None, start_from: Path | None, lambdas: str | None,
                       **loop: Any) -> None:
    """Train the multi-rate hyperprior base codec."""
    from diraccodec.training.base import BaseTrainingOptions, train_base

    ladder = None if lambdas is None else tuple(parse_list(lambdas, float, "--lambdas"))
    train_base(BaseTrainingOptions(data=tuple(data), context=context, start_from=start_from, lambdas=ladder,
                                   **loop), console)


@train.command("diffusion")
@training_options("checkpoints/diffusion", 20000)
@click.option("--lpips-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of the VGG LPIPS term.")
@click.option("--adversarial-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of the adversarial term; above 0 a new run trains a critic beside the U-Net.")
@click.option("--own-prediction-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of samples noised from the model's own first step rather than the truth.")
@click.option("--relative-loss", is_flag=True,
              help="Divide each crop's error and LPIPS by the base reconstruction's, so every level counts alike.")
@click.option("--level-range", default=None, metavar="LOW,HIGH",
              help="Train only on rate levels in this range (default: all of the base's levels).")
@click.option("--blocks", type=click.IntRange(1), default=None,
              help="Residual blocks per resolution of the U-Net: a new run's depth; a checkpoint with fewer is "
                   "deepened, the new blocks starting as the identity (default: the checkpoint's or the "
                   "start's, else 1).")
@click.option("--on-restored", "restoration_weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Learn to enhance this restoration filter's output instead of the base synthesis.")
@click.option("--start-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Diffusion or restoration weights whose U-Net a new run starts from, deepened to --blocks "
                   "(default: a new U-Net).")
@weights_option
def train_diffusion_command(data: tuple[Path, ...], weights: Path | None, level_range: str | None,
                            restoration_weights: Path | None, start_from: Path | None, **loop: Any) -> None:
    """Train the diffusion decoder on the frozen base codec's reconstructions."""
    from diraccodec.modelfiles import default_weights_path
    from diraccodec.training.diffusion import DiffusionTrainingOptions, train_diffusion

    levels = None
    if level_range is not None:
        bounds = parse_list(level_range, float, "--level-range")
        if len(bounds) != 2 or not bounds[0] <= bounds[1]:
            raise DiracError(f"--level-range takes LOW,HIGH with LOW at most HIGH, got {level_range!r}")
        levels = (bounds[0], bounds[1])
    train_diffusion(DiffusionTrainingOptions(data=tuple(data), base_weights=weights or default_weights_path(),
                                             level_range=levels, restoration_weights=restoration_weights,
                                             start_from=start_from, **loop), console)


@train.command("restoration")
@training_options("checkpoints/restoration", 4000)
@click.option("--start-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Diffusion or restoration weights whose U-Net a fresh run starts from (default: "
                   "$DIRAC_DIFFUSION_WEIGHTS if set, else the shipped diffusion decoder).")
@click.option("--from-scratch", is_flag=True, help="Start a fresh run from the identity, not a diffusion U-Net.")
@weights_option
def train_restoration_command(data: tuple[Path, ...], weights: Path | None, start_from: Path | None,
                              from_scratch: bool, **loop: Any) -> None:
    """Train the restoration filter (squared error) on the frozen base codec's reconstructions."""
    from diraccodec.modelfiles import default_diffusion_path, default_weights_path
    from diraccodec.training.restoration import RestorationTrainingOptions, train_restoration

    origin = None if from_scratch else (start_from or default_diffusion_path())
    train_restoration(RestorationTrainingOptions(data=tuple(data), base_weights=weights or default_weights_path(),
                                                 start_from=origin, **loop), console)


@train.command("entropy")
@training_options("checkpoints/base-entropy", 4000, batch_size=16, patch_size=320)
@click.option("--crops", type=click.IntRange(1), default=2400, show_default=True,
              help="Crops whose latents are computed once and trained on.")
@weights_option
def train_entropy_command(data: tuple[Path, ...], weights: Path | None, **loop: Any) -> None:
    """Fine-tune the base codec's entropy model for rate alone, transforms frozen, on large crops."""
    from diraccodec.modelfiles import default_weights_path
    from diraccodec.training.entropy import EntropyTrainingOptions, train_entropy

    train_entropy(EntropyTrainingOptions(data=tuple(data), base_weights=weights or default_weights_path(), **loop),
                  console)


@train.command("level-tables")
@click.argument("output", type=FolderName(path_type=Path))
@training_data_option
@click.option("--every", type=click.IntRange(1), default=1, show_default=True,
              help="Count every N-th training photo (held-out photos are never read).")
@weights_option
@reports_errors
def train_level_tables_command(output: Path, data: tuple[Path, ...], every: int, weights: Path | None) -> None:
    """Count hyper-latent tables per level into a weights folder: the same pixels in fewer bytes."""
    from diraccodec.modelfiles import default_weights_path
    from diraccodec.training.entropy import write_level_tables

    write_level_tables(Path(weights or default_weights_path()).resolve(), data, every, output, console)


@train.command("pack")
@click.argument("output", type=FolderName(path_type=Path))
@training_data_option
@click.option("--prescale", type=click.FloatRange(min=1), default=2.0, show_default=True,
              help="Downscale applied once, ahead of training.")
@click.option("--quality", type=click.IntRange(50, 100), default=80, show_default=True, help="JPEG quality (4:4:4).")
@reports_errors
def train_pack_command(output: Path, data: tuple[Path, ...], prescale: float, quality: int) -> None:
    """Pack training photos into a small, pre-downscaled shard (to carry to a GPU machine)."""
    from diraccodec.training.data import pack_shard

    count, size = pack_shard(data, output, prescale, quality)
    console.print(one_line(f"{output}: {count} images, {size / 2**20:.1f} MiB"))


@train.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("output", type=FileName(dir_okay=False, path_type=Path))
@reports_errors
def train_export_command(checkpoint: Path, output: Path) -> None:
    """Write inference weights from a training checkpoint (base codec, diffusion decoder or restoration filter)."""
    from diraccodec.training.checkpoint import check_not_in_state, load_checkpoint_metadata
    from diraccodec.training.export import export_checkpoint

    load_checkpoint_metadata(checkpoint)  # an unreadable state fails before the output is checked
    check_not_in_state(output, checkpoint)  # the state's next save replaces its folder
    check_outputs({"OUTPUT": output}, [])
    model = export_checkpoint(checkpoint, output)
    console.print(one_line(f"wrote {output} ({model})"))
