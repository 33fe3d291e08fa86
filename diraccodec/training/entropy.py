"""Rate-only fine-tuning of the base codec's entropy model on large latent grids, and tables
for the hyper-latents of each level, counted.

The joint training (`diraccodec.training.base`) sees 128x128 crops: grids of 8x8 latents
and 2x2 hyper-latents, where every hyper-latent sits on a border. The hyperprior learnt
there is a poor fit to whole photos. Here the transforms and gains stay frozen, so the
pixels a latent decodes to do not move, and only the hyper-analysis, hyper-synthesis and
factorized prior learn to spend fewer bits, on latents of large crops. Those latents are
computed once per run from a seeded draw, so a resumed run trains on the same set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from diraccodec.codec.base_codec import BaseCodec, BaseWeights
from diraccodec.codec.hyperprior import MultiRateHyperprior
from diraccodec.compute import thread_count_restored
from diraccodec.console import plain_console, tracked
from diraccodec.entropy.tables import TableSet, tables_from_counts
from diraccodec.errors import DiracError, counted, one_line
from diraccodec.image.files import check_writable_folder
from diraccodec.modelfiles import (
    DEFAULT_BASE_WEIGHTS,
    DEFAULT_DIFFUSION_WEIGHTS,
    DEFAULT_RESTORATION_WEIGHTS,
    default_diffusion_path,
    default_restoration_path,
    load_base_weights,
    retie_unets,
    write_with_level_tables,
)
from diraccodec.options import TRAINING_PHOTOS
from diraccodec.training.base import hyperprior_modules
from diraccodec.training.checkpoint import TrainingState, load_checkpoint_metadata, state_exists, state_folder
from diraccodec.training.crops import CropSampler, check_whole_blocks
from diraccodec.training.data import read_photo, training_images
from diraccodec.training.loop import LoopOptions, check_before_work, run_loop, start_run
from diraccodec.transforms.networks import LATENT_STRIDE

# Crops are cut at the photos' own scale (at most 1.25x smaller): the training photos are
# mostly 320-380 pixels on their short side, and a downscale would cut the grid again.
ENTROPY_SCALE_RANGE = (1.0, 1.25)


@dataclass
class EntropyTrainingOptions(LoopOptions):
    data: tuple[Path, ...] = (TRAINING_PHOTOS,)
    base_weights: Path = DEFAULT_BASE_WEIGHTS
    batch_size: int = 16
    patch_size: int = 320
    crops: int = 2400


def entropy_modules(model: MultiRateHyperprior) -> list[torch.nn.Module]:
    """What the fine-tune trains: everything that prices the latents, the context model included."""
    context = [] if model.context is None else [model.context]
    return [*hyperprior_modules(model), *context]


def latent_bank(model: MultiRateHyperprior, options: EntropyTrainingOptions, console: Console) -> torch.Tensor:
    """Unscaled latents of `options.crops` crops (float16), the same for a given seed."""
    generator = torch.Generator(options.device).manual_seed(options.seed + 1)
    sampler = CropSampler(options.data, options.patch_size, ENTROPY_SCALE_RANGE, generator, options.device)
    console.print(f"{sampler.image_count} images of at least {options.patch_size} pixels a side")
    chunk = 4
    latents = []
    with torch.no_grad():
        for _ in tracked(range(0, options.crops, chunk), "latents", console):
            latents.append(model.analysis(sampler.batch(chunk)).half())
    return torch.cat(latents)[: options.crops]


def rate_loss(
    model: MultiRateHyperprior, latents: torch.Tensor, level_indices: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Bits per pixel of latents at the given (fractional) level indices (from 0)."""
    gain, _ = model.gains(level_indices)
    _, bits_latent, bits_hyper = model.rate(latents.float() * gain)
    pixels = latents.shape[-1] * latents.shape[-2] * LATENT_STRIDE**2
    bpp = (bits_latent + bits_hyper) / pixels
    return {"loss": bpp.mean(), "hyper_bpp": (bits_hyper / pixels).mean().detach()}


def check_resumed_base(checkpoint: Path, weights: BaseWeights) -> None:
    """A state holds the whole model, its transforms too: resumed, it fine-tunes the base it
    began from, whatever `--weights` names; other weights are refused rather than named in
    the export as the base it fine-tunes."""
    if not state_exists(checkpoint):
        return
    began_from = load_checkpoint_metadata(checkpoint).metadata.get("entropy_finetune_of")
    if began_from is not None and began_from != weights.weights_id.hex():
        raise DiracError(f"the training state at {state_folder(checkpoint)} fine-tunes base weights {began_from}, "
                         f"not {weights.path.name} ({weights.weights_id.hex()}): name another --checkpoint "
                         f"for these weights, or the weights it began from")


@thread_count_restored()
def train_entropy(options: EntropyTrainingOptions, console: Console | None = None) -> TrainingState:
    """Fine-tune the hyperprior for rate alone on large latent grids, the transforms frozen
    (the module's docstring says why); a state in options.checkpoint is resumed."""
    console = plain_console(console)
    check_whole_blocks(options.patch_size)
    check_before_work(options)
    torch.manual_seed(options.seed)
    weights = load_base_weights(options.base_weights)
    check_resumed_base(options.checkpoint, weights)
    model = MultiRateHyperprior(weights.model.config)
    model.load_state_dict(weights.model.state_dict())
    model.requires_grad_(False)
    for module in entropy_modules(model):
        module.requires_grad_(True)
    run = start_run(model, options, console)
    latents = latent_bank(run.model, options, console)
    console.print(f"{latents.shape[0]} latent grids of {latents.shape[-2]}x{latents.shape[-1]}")
    run.state.metadata.update(
        {
            "kind": "base",  # a fine-tune of the base codec's entropy model
            "config": model.config.as_fields(),
            "entropy_finetune_of": weights.weights_id.hex(),
            "batch_size": options.batch_size,
            "patch_size": options.patch_size,
            "crops": options.crops,
            "device": str(run.device),
            "data": [str(p) for p in options.data],
        }
    )
    top_index = model.config.num_levels - 1

    def next_loss() -> dict[str, torch.Tensor]:
        generator, device = run.generator, run.device
        batch = latents[torch.randint(latents.shape[0], (options.batch_size,), generator=generator, device=device)]
        mirrored = torch.rand((options.batch_size, 1, 1, 1), generator=generator, device=device) < 0.5
        batch = torch.where(mirrored, batch.flip(-1), batch)  # no host sync for a coin flip
        level_indices = torch.rand(options.batch_size, generator=generator, device=device) * top_index
        return rate_loss(run.step_model, batch, level_indices)

    return run_loop(run, options, next_loss, console, options.batch_size * options.patch_size**2)


# Pseudo-counts drawing a level's fitted hyper table towards the shared one: a channel seen on
# few hyper-latents keeps about the shared table's shape.
LEVEL_TABLE_PSEUDO_COUNTS = 16.0


def fit_level_tables(weights: BaseWeights, photos: Sequence[Path], console: Console | None = None,
                     pseudo_counts: float = LEVEL_TABLE_PSEUDO_COUNTS) -> TableSet:
    """Hyper tables for each whole level 0 .. num_levels, counted from the hyper-latents the
    encoder makes of whole `photos` at their own scale at that level.

    The factorized prior is one for all levels, while the hyper-latents of the low levels are
    narrower: there a table of their own spends fewer bits on the side information. Nothing
    trains: the model and its reconstructions stay as they are."""
    console = plain_console(console)
    codec = BaseCodec(weights)
    shared = weights.hyper_tables
    levels = weights.model.config.num_levels + 1
    counts = np.zeros((levels * shared.count, shared.frequencies.shape[1]))
    escape = shared.lengths - 1
    with torch.no_grad():
        for path in tracked(photos, "hyper-latents", console):
            y = codec.analysis_latents(np.asarray(read_photo(path)))
            for level in range(levels):
                _, hyper = codec.hyper_latents(y, float(level))
                index = hyper.reshape(shared.count, -1) - shared.offsets[:, None]
                index = np.where((index < 0) | (index >= escape[:, None]), escape[:, None], index)
                rows = np.broadcast_to(np.arange(shared.count)[:, None] + level * shared.count, index.shape)
                np.add.at(counts, (rows, index), 1)
    return tables_from_counts(counts, shared, pseudo_counts)


def write_level_tables(source: Path, data: Sequence[Path], every: int, output: Path,
                       console: Console | None = None) -> None:
    """`source` with hyper tables per level counted on every `every`-th training photo under
    `data`, written into the folder `output`; the installed restoration filter and diffusion
    decoder go with it, tied to the new weights (modelfiles.retie_unets), where they fit."""
    console = plain_console(console)
    written_base = output / "base.safetensors"
    restoration, diffusion = default_restoration_path(), default_diffusion_path()
    # what this writes (retie_unets writes the U-Nets under the shipped files' names)
    targets = {(output / path.name).resolve() for path in (DEFAULT_BASE_WEIGHTS, DEFAULT_RESTORATION_WEIGHTS,
                                                           DEFAULT_DIFFUSION_WEIGHTS)}
    read = [path for path in (source, restoration, diffusion) if path.is_file()]
    if replaced := [path for path in read if path.resolve() in targets]:
        raise DiracError(f"{output} holds {replaced[0]}, which the tables are counted from or carried with: write "
                         f"into another folder (the weights tied to each other would be replaced one by one)")
    check_writable_folder(output)
    photos = training_images(data)[::every]
    if not photos:
        raise DiracError(f"no training photos under {', '.join(map(str, data))}")
    base = load_base_weights(source)
    tables = fit_level_tables(base, photos, console)
    write_with_level_tables(source, written_base, tables, {
        "photos": len(photos), "every": every, "pseudo_counts": LEVEL_TABLE_PSEUDO_COUNTS,
        "data": [str(folder) for folder in data]})
    console.print(one_line(f"wrote {written_base}: hyper tables for levels 0-{base.model.config.num_levels} "
                           f"counted on {counted(len(photos), 'photo')}"))
    if not (restoration.exists() and diffusion.exists()):
        console.print("no restoration filter and diffusion decoder installed to carry over")
        return
    try:
        written = retie_unets(source, written_base, restoration, diffusion, output)
    except DiracError as error:
        console.print(one_line(f"the installed restoration filter and diffusion decoder are not carried over: {error}"))
        return
    console.print(one_line(f"wrote {' and '.join(map(str, written))}, naming the new base weights"))
