"""Training of the multi-rate base codec.

Each sample in a batch gets its own random rate level; the loss at that level is
lambda * 255^2 * MSE + bpp. Runs on CPU or CUDA, saves its state every few minutes and
resumes it (model, Adam moments, data and noise RNG); a resumed run keeps its state's size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console

from diraccodec.codec.hyperprior import (
    DEFAULT_LAMBDAS,
    HyperpriorConfig,
    MultiRateHyperprior,
    ladder_position,
    row_at,
)
from diraccodec.compute import thread_count_restored
from diraccodec.console import plain_console
from diraccodec.errors import DiracError
from diraccodec.options import TRAINING_PHOTOS
from diraccodec.training.checkpoint import (
    TrainingState,
    export_info,
    load_checkpoint,
    load_checkpoint_metadata,
    state_exists,
)
from diraccodec.training.crops import CropSampler, check_whole_blocks
from diraccodec.training.loop import LoopOptions, check_before_work, run_loop, start_run
from diraccodec.training.widening import grow_model, grown_gains


@dataclass
class BaseTrainingOptions(LoopOptions):
    data: tuple[Path, ...] = (TRAINING_PHOTOS,)
    batch_size: int = 8
    patch_size: int = 128
    channels: int = HyperpriorConfig.channels
    # M, the latents' channels (None: start_from's, else the default); from start_from new
    # latents grow beside the trained ones, starting at 0
    latent_channels: int | None = None
    # A new run's entropy model, one of CONTEXTS (None: start_from's, else the hyperprior alone)
    context: str | None = None
    # A fresh run starts from these base weights (their size, transforms, gains and entropy
    # model; a context model they lack starts at zero, predicting what their hyperprior does).
    start_from: Path | None = None
    # A fresh run's rate-distortion trade-offs, one per level, ascending (None: the defaults, or
    # those of start_from); the gains of start_from's ladder are carried over to them
    lambdas: tuple[float, ...] | None = None
    # A new run keeps the hyperprior (hyper-analysis, hyper-synthesis, factorized prior) of
    # start_from as it is and trains the transforms, gains and context model: small downscaled
    # crops would undo an entropy fine-tune made on large crops at the photos' own scale. Of
    # latents grown beside start_from's, it learns the means and scales alone.
    freeze_hyperprior: bool = False
    # A new run's analysis and synthesis widths (None: N, or start_from's). From start_from a
    # wider transform grows out of the trained one and starts computing exactly what it does.
    analysis_channels: int | None = None
    synthesis_channels: int | None = None


@functools.lru_cache(maxsize=4)
def _lambda_table(lambdas: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The ladder on the device, made once: a copy from the host at every step would wait for
    the GPU to finish the queued work first, each step."""
    return torch.tensor(lambdas, device=device)


def rate_distortion_loss(
    model: MultiRateHyperprior, batch: torch.Tensor, level_indices: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Loss, bpp and PSNR, each averaged over the batch, at (B,) whole level indices (from 0)."""
    result = model(batch, level_indices.float())
    pixels = batch.shape[-1] * batch.shape[-2]
    bpp = (result.bits_latent + result.bits_hyper) / pixels
    mse = (result.reconstruction - batch).pow(2).flatten(1).mean(1)
    lambdas = _lambda_table(model.config.lambdas, batch.device)[level_indices]
    loss = (lambdas * 255**2 * mse + bpp).mean()
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()
    return {"loss": loss, "bpp": bpp.mean().detach(), "psnr": psnr.detach()}


@thread_count_restored()
def train_base(options: BaseTrainingOptions, console: Console | None = None) -> TrainingState:
    """Train the base codec (transforms, hyperprior, level gains) for rate and distortion at
    every level at once; a state in options.checkpoint is resumed, keeping its size."""
    console = plain_console(console)
    check_whole_blocks(options.patch_size)
    check_before_work(options)
    torch.manual_seed(options.seed)
    started_from, frozen, trained_latents = None, options.freeze_hyperprior, None
    if state_exists(options.checkpoint):  # a resumed run keeps its state's size, context, ladder and freeze
        metadata = load_checkpoint_metadata(options.checkpoint).metadata
        model = MultiRateHyperprior(HyperpriorConfig.from_fields(metadata["config"]))
        frozen = bool(metadata.get("frozen_hyperprior", False))
        trained_latents = metadata.get("frozen_latents")
        if (options.start_from is not None or options.lambdas is not None
                or options.context not in (None, model.config.context) or (options.freeze_hyperprior and not frozen)
                or options.analysis_channels or options.synthesis_channels or options.latent_channels):
            console.print("note: resuming the saved state; --start-from, --lambdas, --context, --freeze-hyperprior "
                          "and the widths apply to new runs")
    else:
        model, started_from, start_latents = _new_model(options, console)
        if frozen and start_latents is not None and start_latents < model.config.latent_channels:
            trained_latents = start_latents
            console.print(f"the frozen hyperprior learns the means and scales of the new latents "
                          f"{start_latents + 1}-{model.config.latent_channels} alone")
    if frozen:
        freeze_hyperprior(model, trained_latents)
    config = model.config
    run = start_run(model, options, console, from_weights=started_from is not None)
    console.print(f"loading training images from {', '.join(map(str, options.data))}")
    sampler = CropSampler(options.data, options.patch_size, generator=run.generator, device=run.device,
                          channels_last=run.channels_last)
    console.print(f"{sampler.image_count} images; model N={config.channels} M={config.latent_channels} "
                  f"(analysis {config.analysis_width}, synthesis {config.synthesis_width}) context {config.context}")
    run.state.metadata.update(
        {
            "kind": "base",
            "config": config.as_fields(),
            "batch_size": options.batch_size,
            "patch_size": options.patch_size,
            "device": str(run.device),
            "data": [str(p) for p in options.data],
            "frozen_hyperprior": frozen,
        }
    )
    if trained_latents is not None:
        run.state.metadata["frozen_latents"] = trained_latents
    if started_from is not None:  # kept by every later save of this state
        run.state.metadata["started_from"] = started_from

    def next_loss() -> dict[str, torch.Tensor]:
        batch = sampler.batch(options.batch_size)
        level_indices = torch.randint(config.num_levels, (options.batch_size,), generator=run.generator,
                                      device=run.device)
        return rate_distortion_loss(run.step_model, batch, level_indices)

    return run_loop(run, options, next_loss, console, options.batch_size * options.patch_size**2)


def hyperprior_modules(model: MultiRateHyperprior) -> list[torch.nn.Module]:
    """The hyperprior: what predicts every latent's mean and scale from the hyper-latents, and
    prices those."""
    return [model.hyper_analysis, model.hyper_synthesis, model.hyper_prior]


def freeze_hyperprior(model: MultiRateHyperprior, trained_latents: int | None = None) -> None:
    """Hold the hyperprior as it is. With trained_latents, the latents from that channel on were
    grown beside trained ones: the hyper-synthesis still learns their means and scales (its
    rows for them, from hyper-latents that do not read them), the rest stays as it is."""
    for module in hyperprior_modules(model):
        module.requires_grad_(False)
    if trained_latents is None:
        return
    last = model.hyper_synthesis[-1]
    last.requires_grad_(True)
    m = model.config.latent_channels
    learns = torch.zeros(2 * m, dtype=torch.bool)
    learns[trained_latents:m] = learns[m + trained_latents :] = True  # their means, their scales
    on_device: dict[torch.device, torch.Tensor] = {}  # copied once: no transfer in every step

    def new_rows_only(grad: torch.Tensor) -> torch.Tensor:
        if grad.device not in on_device:
            on_device[grad.device] = learns.to(grad.device)
        return grad * on_device[grad.device].view(-1, *[1] * (grad.dim() - 1))

    last.weight.register_hook(new_rows_only)
    last.bias.register_hook(new_rows_only)


def _new_model(options: BaseTrainingOptions, console: Console) -> tuple[MultiRateHyperprior, str | None, int | None]:
    """A fresh run's model: from scratch, or from the weights of options.start_from (whose
    weights id and latent channels it also returns, for the state's record)."""
    ladder = None if options.lambdas is None else check_lambdas(options.lambdas)
    requested = {"analysis": options.analysis_channels, "synthesis": options.synthesis_channels,
                 "latents": options.latent_channels}
    for name, width in requested.items():
        if width is not None and width < 1:
            raise DiracError(f"the {name} width must be at least 1, got {width}")
    if options.start_from is None:
        config = HyperpriorConfig(options.channels, options.latent_channels or HyperpriorConfig.latent_channels,
                                  ladder or DEFAULT_LAMBDAS, options.context or HyperpriorConfig.context)
        model = MultiRateHyperprior(with_widths(config, options.analysis_channels, options.synthesis_channels))
        return model, None, None
    from diraccodec.modelfiles import load_base_weights

    loaded = load_base_weights(Path(options.start_from).resolve())
    try:
        model = model_from_weights(loaded.model, options.context, ladder, options.analysis_channels,
                                   options.synthesis_channels, options.latent_channels)
    except ValueError as error:
        widths = [f"{name} {width}" for name, width in requested.items() if width]
        context = options.context or loaded.model.config.context
        raise DiracError(f"{options.start_from} does not fit a {context} context model"
                         f"{' of ' + ' and '.join(widths) if widths else ''}: {error}") from None
    grown = [f"{name} {old} -> {new}" for name, (old, new) in changed_widths(loaded.model.config, model.config).items()]
    if loaded.model.context is None and model.context is not None:
        grown.append("a new context model")
    console.print(f"starting from {options.start_from}" + (f" ({', '.join(grown)})" if grown else ""))
    return model, loaded.weights_id.hex(), loaded.model.config.latent_channels


def with_widths(config: HyperpriorConfig, analysis: int | None, synthesis: int | None) -> HyperpriorConfig:
    """`config` with the given analysis and synthesis widths (None: keep its own); a width equal
    to N is recorded as none of its own."""
    analysis = config.analysis_width if analysis is None else analysis
    synthesis = config.synthesis_width if synthesis is None else synthesis
    return replace(config, analysis_channels=None if analysis == config.channels else analysis,
                   synthesis_channels=None if synthesis == config.channels else synthesis)


def changed_widths(old: HyperpriorConfig, new: HyperpriorConfig) -> dict[str, tuple[int, int]]:
    """What differs in width between two configurations (the analysis, the synthesis, the
    latents' channels): (old, new)."""
    widths = {"analysis": (old.analysis_width, new.analysis_width),
              "synthesis": (old.synthesis_width, new.synthesis_width),
              "latents": (old.latent_channels, new.latent_channels)}
    return {name: pair for name, pair in widths.items() if pair[0] != pair[1]}


def model_from_weights(start: MultiRateHyperprior, context: str | None = None,
                       lambdas: tuple[float, ...] | None = None, analysis_channels: int | None = None,
                       synthesis_channels: int | None = None,
                       latent_channels: int | None = None) -> MultiRateHyperprior:
    """A model with `start`'s transforms and hyperprior, the given context model (None: start's),
    ladder (None: start's), its gains carried over to the ladder, and analysis and synthesis
    widths and latent channels (None: start's; never fewer). A context model that start lacks
    begins at zero, and wider transforms and new latents grow out of start's
    (training.widening), so the new model codes as start does."""
    config = replace(start.config, context=context or start.config.context, lambdas=lambdas or start.config.lambdas,
                     latent_channels=latent_channels or start.config.latent_channels)
    model = MultiRateHyperprior(with_widths(config, analysis_channels, synthesis_channels))
    grow_model(start, model)
    with torch.no_grad():
        for name in ("log_gain", "log_inverse_gain"):
            on_ladder = gains_on_ladder(getattr(start, name), start.config.lambdas, model.config.lambdas)
            getattr(model, name).copy_(grown_gains(on_ladder, model.config.latent_channels))
    return model


def check_lambdas(lambdas: tuple[float, ...]) -> tuple[float, ...]:
    """A ladder of as many levels as the codec's interface has (-q 1 to 8), rising strictly."""
    count = len(DEFAULT_LAMBDAS)
    if (len(lambdas) != count or any(not (math.isfinite(value) and value > 0) for value in lambdas)
            or list(lambdas) != sorted(set(lambdas))):
        raise DiracError(f"--lambdas takes {count} positive values in ascending order, got "
                         f"{','.join(f'{value:g}' for value in lambdas)}")
    return tuple(float(value) for value in lambdas)


def gains_on_ladder(log_gains: torch.Tensor, old: tuple[float, ...], new: tuple[float, ...]) -> torch.Tensor:
    """Log-gains (len(new), M) for the lambdas `new`, from those trained for `old`: linear in
    log-lambda between the two nearest old levels, and extended along the end segments beyond
    them, so that a run with a lower or higher ladder starts near the rates it asks for."""
    return torch.stack([row_at(log_gains, ladder_position(old, value) - 1) for value in new])


def export_base_checkpoint(checkpoint: Path, output: Path) -> None:
    """Inference weights from a training state, recording how long it trained."""
    from diraccodec.modelfiles import export_base_weights

    model = MultiRateHyperprior(HyperpriorConfig.from_fields(load_checkpoint_metadata(checkpoint).metadata["config"]))
    state = load_checkpoint(checkpoint, model, None, None, prefer_average=True)
    export_base_weights(model, output, export_info(state))
