"""Training of the diffusion decoder on the frozen base codec's reconstructions.

Each sample gets a random (fractional) rate level; the base codec reconstructs it with hard
quantisation exactly as the decoder would; the U-Net learns to predict the clean residual
x - x_base from a noisy version of it at a random time in [0, start_time]. The loss is the
squared error of the predicted residual, optionally plus LPIPS (VGG16) of the resulting
image against the original.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from diraccodec.compute import thread_count_restored
from diraccodec.console import plain_console
from diraccodec.diffusion.sampler import SamplerSettings
from diraccodec.diffusion.schedule import signal_level
from diraccodec.errors import DiracError
from diraccodec.modelfiles import (
    DEFAULT_BASE_WEIGHTS,
    export_diffusion_weights,
    load_restoration_weights,
    load_unet_weights,
)
from diraccodec.options import TRAINING_PHOTOS
from diraccodec.restoration.unet import RESIDUAL_SCALE, ResidualUNet, ResidualUNetConfig
from diraccodec.training.adversarial import CriticisedUNet, PatchCritic, adversarial_terms
from diraccodec.training.checkpoint import (
    RNG_PREFIX,
    TrainingState,
    export_info,
    load_checkpoint,
    load_checkpoint_metadata,
    model_weights,
    read_state,
    state_exists,
    write_state,
)
from diraccodec.training.loop import LoopOptions, run_loop, start_run
from diraccodec.training.reconstructions import (
    ReconstructedCrops,
    begin_unet_training,
    check_unet_levels,
    note_base_change,
)

# The model learns times in [0, 0.7]: wider than the sampler's default start, so the start
# can be tuned at export without retraining.
TRAINED_TIME_RANGE = 0.7


@dataclass
class DiffusionTrainingOptions(LoopOptions):
    data: tuple[Path, ...] = (TRAINING_PHOTOS,)
    base_weights: Path = DEFAULT_BASE_WEIGHTS
    batch_size: int = 8
    patch_size: int = 128
    widths: tuple[int, ...] = ResidualUNetConfig.widths
    # Residual blocks per resolution: a new run's depth; a saved state with fewer is deepened.
    # None: the state's (one for a new run).
    blocks: int | None = None
    lpips_weight: float = 0.0
    start_time: float = TRAINED_TIME_RANGE
    own_prediction_fraction: float = 0.0
    relative_loss: bool = False
    # Rate levels drawn for the crops (1-based, fractional); None: every level of the base.
    level_range: tuple[float, float] | None = None
    # Learn to enhance the restoration filter's output (this file) rather than the base synthesis.
    restoration_weights: Path | None = None
    # A new run starts from this diffusion decoder's (or restoration filter's) U-Net, deepened
    # to `blocks` where that is more (None: a new U-Net of `widths`).
    start_from: Path | None = None
    # Weight of the adversarial term (training.adversarial); above 0 a new run trains a critic
    # beside the U-Net, kept in its state.
    adversarial_weight: float = 0.0


# Floor of a crop's squared base residual in the relative loss (model units; an RMS of 0.7% of
# the pixel range), so that flat crops with almost no residual do not dominate a batch.
RELATIVE_MSE_FLOOR = 0.005


def diffusion_loss(
    unet: ResidualUNet,
    batch: torch.Tensor,
    base: torch.Tensor,
    levels: torch.Tensor,
    start_time: float,
    perceptual: torch.nn.Module | None = None,
    lpips_weight: float = 0.0,
    own_prediction_fraction: float = 0.0,
    sampling_start: float = SamplerSettings.start_time,
    relative_loss: bool = False,
    critic: PatchCritic | None = None,
    adversarial_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """critic, adversarial_weight: a critic's term on the decoded image (training.adversarial),
    and the critic's own term, added to the loss.

    relative_loss: divide each crop's squared error and LPIPS by those of the base
    reconstruction itself, so that every rate level weighs the same in relative terms, as the
    product's targets are stated (LPIPS lowered by a share, PSNR lowered by a few dB). In
    absolute terms the error and LPIPS of the finest levels are small, and the model learns
    to leave them as they are.

    own_prediction_fraction: the share of samples whose noisy input is built from the model's
    own first sampling step (from noise alone at `sampling_start`) instead of the true residual,
    so that it learns what the sampler feeds it from the second step on: a noisy guess to
    correct, not the truth to copy. The target is the true residual either way.
    """
    residual = (batch - base) / RESIDUAL_SCALE
    time = torch.rand(batch.shape[0], device=batch.device) * start_time
    signal = signal_level(time)[:, None, None, None]
    clean = residual
    if own_prediction_fraction > 0:
        with torch.no_grad():
            start = torch.full_like(time, sampling_start)
            first_input = (1 - signal_level(start))[:, None, None, None].sqrt() * torch.randn_like(residual)
            own = unet(first_input, start, base, levels)
        chosen = torch.rand(batch.shape[0], device=batch.device) < own_prediction_fraction
        clean = torch.where(chosen[:, None, None, None], own, residual)
    noisy = signal.sqrt() * clean + (1 - signal).sqrt() * torch.randn_like(residual)
    prediction = unet(noisy, time, base, levels)
    squared_error = (prediction - residual).pow(2).mean(dim=(1, 2, 3))
    figures = {"residual_mse": squared_error.mean().detach()}
    if relative_loss:
        squared_error = squared_error / residual.pow(2).mean(dim=(1, 2, 3)).clamp_min(RELATIVE_MSE_FLOOR)
    loss = squared_error.mean()
    decoded = (base + prediction * RESIDUAL_SCALE).clamp(0, 1)
    if perceptual is not None and lpips_weight > 0:
        distance = perceptual(decoded, batch)
        figures["lpips"] = distance.mean().detach()
        if relative_loss:
            with torch.no_grad():
                base_distance = perceptual(base, batch).clamp_min(1e-3)
            distance = distance / base_distance
        loss = loss + lpips_weight * distance.mean()
    if critic is not None and adversarial_weight > 0:
        decoder_term, critic_term = adversarial_terms(critic, batch, decoded, base)
        figures.update(adversarial=decoder_term.detach(), critic=critic_term.detach())
        loss = loss + adversarial_weight * decoder_term + critic_term
    return {"loss": loss, **figures}


@thread_count_restored()
def train_diffusion(options: DiffusionTrainingOptions, console: Console | None = None) -> TrainingState:
    """Train the diffusion U-Net to predict the residual between the photo and the image it
    enhances (the base synthesis, or the restoration filter's output with --on-restored) from
    its noisy form at each time; a state in options.checkpoint is resumed."""
    console = plain_console(console)
    base_weights = begin_unet_training(options, options.patch_size, options.base_weights)
    top_level = base_weights.model.config.num_levels
    lowest, highest = options.level_range or (1.0, float(top_level))
    if lowest > highest:
        raise DiracError(f"--level-range takes LOW,HIGH with LOW at most HIGH, got {lowest:g},{highest:g}")
    if not 1 <= lowest <= highest <= top_level:
        raise DiracError(f"--level-range {lowest:g},{highest:g} is outside the base's levels 1-{top_level}")
    config = ResidualUNetConfig(widths=tuple(options.widths), max_level=float(top_level), blocks=options.blocks or 1)
    unet, critic_fields = None, None
    if state_exists(options.checkpoint):
        if options.blocks and deepen_checkpoint(options.checkpoint, options.blocks):
            console.print(f"deepened {options.checkpoint} to {options.blocks} blocks per resolution (the new "
                          "blocks start as the identity; Adam moments and weight average start afresh)")
        metadata = load_checkpoint_metadata(options.checkpoint).metadata
        config, critic_fields = ResidualUNetConfig.from_fields(metadata["config"]), metadata.get("critic")
        if options.adversarial_weight > 0 and critic_fields is None:
            raise DiracError(f"{options.checkpoint} holds no critic: start a new run from its exported weights "
                             "(--start-from) to add the adversarial term")
    elif options.start_from is not None:
        start = load_unet_weights(options.start_from)  # frozen, for inference
        unet = start.deepened(max(options.blocks or 1, start.config.blocks))  # a trainable copy, deeper if asked
        check_unet_levels(unet.config, top_level)
        console.print(f"starting from the U-Net of {options.start_from}")
    model: torch.nn.Module = unet or ResidualUNet(config)
    if critic_fields is not None or (not state_exists(options.checkpoint) and options.adversarial_weight > 0):
        model = CriticisedUNet.around(model, critic_fields)
    run = start_run(model, options, console, from_weights=unet is not None)
    critic = run.model.critic if isinstance(run.model, CriticisedUNet) else None
    note_base_change(run, base_weights.weights_id, console)
    perceptual = None
    if options.lpips_weight > 0:
        from diraccodec.perceptual.lpips import LPIPS

        perceptual = LPIPS("vgg16").to(run.device)
    restoration = None
    if options.restoration_weights is not None:
        restoration = load_restoration_weights(Path(options.restoration_weights).resolve())
        assert restoration is not None  # an explicit path either loads or raises
        if restoration.base_weights_id != base_weights.weights_id:
            raise DiracError(f"the restoration weights were trained on base {restoration.base_weights_id.hex()}, "
                             f"not on {base_weights.weights_id.hex()}")
    crops = ReconstructedCrops(options.data, options.patch_size, options.batch_size, base_weights.model, run,
                               (lowest, highest), console, restoration.model if restoration else None)
    run.state.metadata.update({
        "kind": "diffusion",
        "config": asdict(run.model.config),
        "base_weights_id": base_weights.weights_id.hex(),
        "lpips_weight": options.lpips_weight,
        "start_time": options.start_time,
        "own_prediction_fraction": options.own_prediction_fraction,
        "relative_loss": options.relative_loss,
        "level_range": list(options.level_range) if options.level_range else None,
        "restoration_weights_id": restoration.weights_id.hex() if restoration else None,
        "critic": run.model.critic_record() if critic is not None else None,
        "adversarial_weight": options.adversarial_weight,
        **crops.metadata,
    })
    if not run.state.step:  # what a fresh run started from; a resumed run keeps the record
        run.state.metadata["start_from"] = str(options.start_from) if unet is not None else None

    def next_loss() -> dict[str, torch.Tensor]:
        batch, base, levels = crops.draw()
        return diffusion_loss(run.step_model, batch, base, levels, options.start_time, perceptual,
                              options.lpips_weight, options.own_prediction_fraction,
                              relative_loss=options.relative_loss, critic=critic,
                              adversarial_weight=options.adversarial_weight)

    return run_loop(run, options, next_loss, console, crops.pixels_per_step)


def deepen_checkpoint(path: Path, blocks: int) -> bool:
    """Rewrite the saved state with `blocks` residual blocks per resolution where it has fewer,
    computing the same function (the U-Net's `deepened`), so a run grows a trained model rather
    than starting over. The Adam moments go (the parameters' order changes) and with them the
    weight average, so the run ramps its learning rate up again; the RNG states stay. False
    where it had enough."""
    metadata = load_checkpoint_metadata(path).metadata
    config = ResidualUNetConfig.from_fields(metadata["config"])
    if metadata.get("critic") and blocks > config.blocks:
        raise DiracError(f"{path} holds a critic: deepen the U-Net in a run without the adversarial term")
    if blocks < config.blocks:
        raise DiracError(f"{path} has {config.blocks} blocks per resolution; --blocks {blocks} cannot remove any")
    if blocks == config.blocks:
        return False
    state, tensors = read_state(path)
    model = ResidualUNet(config)
    model.load_state_dict(model_weights(tensors))
    deeper = model.deepened(blocks)
    state.metadata["config"] = asdict(deeper.config)
    kept = {name: tensor for name, tensor in tensors.items() if name.startswith(RNG_PREFIX)}
    kept.update({f"model.{name}": tensor.contiguous() for name, tensor in deeper.state_dict().items()})
    write_state(path, kept, state)
    return True


def export_diffusion_checkpoint(checkpoint: Path, output: Path) -> None:
    """The state's U-Net (its weight average where kept) as a diffusion weights file, with the
    default sampler settings, started no higher than the time range the model was trained on."""
    metadata = load_checkpoint_metadata(checkpoint).metadata
    model = ResidualUNet(ResidualUNetConfig.from_fields(metadata["config"]))
    trained: torch.nn.Module = model  # what the state holds: the U-Net, or the U-Net beside its critic
    if metadata.get("critic"):
        trained = CriticisedUNet.around(model, metadata["critic"])
    state = load_checkpoint(checkpoint, trained, None, None, prefer_average=True)
    trained_range = metadata.get("start_time", TRAINED_TIME_RANGE)
    settings = SamplerSettings(start_time=min(SamplerSettings.start_time, trained_range))
    restoration_id = metadata.get("restoration_weights_id")
    export_diffusion_weights(model, settings, bytes.fromhex(metadata["base_weights_id"]), output, export_info(state),
                             bytes.fromhex(restoration_id) if restoration_id else None)
