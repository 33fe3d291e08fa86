"""Choose the diffusion sampler's settings on training photos, never on Kodak.

For each candidate (start time, end time, grid spacing, update) it decodes 256x256 crops of a
few photos at three rate levels with 1, 2, 5 and 20 steps, and prints mean PSNR and LPIPS
(AlexNet) against the crops themselves, beside the 0-step figures. The update is DDIM with eta
0 or 1, or 'renoise' (fresh noise at every step). The settings are the sampler's, stored in the
diffusion weights at export, so this needs no retraining.

    python scripts/tune_sampler.py ../shared/data/train/sun-hays80 --images 6 --starts 0.2,0.4,0.55

--gains, --detail-gains, --detail-sigmas and --kept-noise try the finishing touches (the gain
on the last prediction's smooth part, the gain on its detail finer than the blur's sigma, and
the share of the noise left at the grid's end; the same at every level here, where the weights
file holds one value per level, used when they are not given): each sampling is done once and
finished every way. Below the weights' `full_steps`, each candidate applies the share of itself
that the steps earn, as decoding does.

--lattice-periods and --lattice-cells try taking the U-Net's grid-locked lattice out of the
last prediction first (period 0: not at all). --vgg also prints LPIPS on VGG16 features, a
second opinion: the AlexNet variant, which the evaluation reports, can reward a regular
lattice as texture where VGG16 does not (docs/diffusion.md#the-lattice-session-13).

With --weights it also compares decoders. To choose between them at the top levels, use
BSDS500 photos at their own scale (--downscale 1 --size 320): of the training sets tried,
only it ranked session 4's and session 6's decoders as Kodak does (docs/results.md).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import click
import numpy as np
from PIL import Image

from diraccodec import api
from diraccodec.cli import parse_list
from diraccodec.diffusion import detail_map
from diraccodec.diffusion.decoder import DiffusionDecoder
from diraccodec.diffusion.sampler import Finishing, per_level
from diraccodec.evaluation.metrics import lpips, psnr
from diraccodec.training.data import list_images


def crops(folder: Path, count: int, size: int = 256, downscale: float = 2.0) -> list[Image.Image]:
    """Centre crops of every n-th photo, after a downscale (2x as in training; 1 keeps the
    photos' own scale, whose smoother detail is closer to Kodak's)."""
    paths = list_images([folder])
    chosen = paths[:: max(1, len(paths) // count)][:count]
    result = []
    for path in chosen:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if downscale != 1:
                size_after = (round(image.width / downscale), round(image.height / downscale))
                image = image.resize(size_after, Image.Resampling.LANCZOS)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        result.append(image.crop((left, top, left + size, top + size)))
    return result


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--images", default=8, show_default=True)
@click.option("--levels", default="1,4,7", show_default=True)
@click.option("--starts", default="0.3,0.4,0.5,0.6", show_default=True)
@click.option("--ends", default="0", show_default=True, help="End times of the sampler's grid.")
@click.option("--grid-powers", default=None,
              help="Spacings of the grid (1: even; below 1, short steps first) [default: the weights' own per level].")
@click.option("--updates", default="ddim,renoise", show_default=True, help="ddim (eta 0), ddim1 (eta 1), renoise.")
@click.option("--steps", "step_counts", default="1,2,5,20", show_default=True)
@click.option("--size", default=256, show_default=True, help="Side of the square crops.")
@click.option("--downscale", default=2.0, show_default=True, help="Downscale of the photos before cropping.")
@click.option("--gains", default=None, help="Gains on the last prediction [default: the weights' own per level].")
@click.option("--detail-gains", default=None,
              help="Gains on the last prediction's detail [default: the weights' own; the gain where none].")
@click.option("--detail-sigmas", default=None, help="Sigmas (pixels) of the blur that splits off the detail.")
@click.option("--kept-noise", "kept_noises", default=None,
              help="Shares of the noise left at the grid's end kept in the output [default: the weights' own].")
@click.option("--lattice-periods", default=None,
              help="Periods (pixels) of the lattice taken out of the prediction, 0: none [default: the weights' own].")
@click.option("--lattice-cells", default=None,
              help="Periods over which the lattice is measured [default: the weights' own].")
@click.option("--detail-match", "detail_matches", default=None,
              help="Shares of the detail map's RMS the fine detail is scaled to (0: none) [default: the weights' own].")
@click.option("--vgg", is_flag=True, help="Also print LPIPS on VGG16 features (slower).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--search", "search_passes", default=0, show_default=True, help="Encoder search passes.")
def main(folder: Path, images: int, levels: str, starts: str, ends: str, grid_powers: str | None, updates: str,
         step_counts: str, size: int, downscale: float, gains: str | None, detail_gains: str | None,
         detail_sigmas: str | None, kept_noises: str | None, lattice_periods: str | None, lattice_cells: str | None,
         detail_matches: str | None, vgg: bool, weights: Path | None, search_passes: int) -> None:
    # the shipped decoder unless --weights; with the filter it was trained on, where it was
    shipped = api.get_diffusion(api.get_codec(), weights)
    originals = crops(folder, images, size, downscale)
    level_list = parse_list(levels, float, "--levels")
    files = {level: [api.encode(image, level, search_passes=search_passes) for image in originals]
             for level in level_list}
    # the decoder restores the synthesis itself where it was trained on the filter's output
    bases = {level: [np.asarray(api.decode(data, restore=False)) for data in files[level]] for level in level_list}
    restored = {level: [np.asarray(api.decode(data)) for data in files[level]] for level in level_list}

    def score(decoded: list[np.ndarray]) -> str:
        """Mean PSNR and LPIPS (and LPIPS on VGG16 where asked) against the crops."""
        pairs = [(o, Image.fromarray(d)) for o, d in zip(originals, decoded, strict=True)]
        text = f"{np.mean([psnr(o, d) for o, d in pairs]):.2f} dB {np.mean([lpips(o, d) for o, d in pairs]):.4f}"
        return text + (f" vgg {np.mean([lpips(o, d, 'vgg16') for o, d in pairs]):.4f}" if vgg else "")

    for level in level_list:
        print(f"level {level:g}  0 steps: {score(bases[level])}; restored: {score(restored[level])}")
    variants = {"ddim": {"eta": 0.0}, "ddim1": {"eta": 1.0}, "renoise": {"renoise": True}}
    powers = ([(power,) for power in parse_list(grid_powers, float, "--grid-powers")] if grid_powers
              else [shipped.settings.grid_power])
    grid = itertools.product(parse_list(starts, float, "--starts"), parse_list(ends, float, "--ends"), powers,
                             updates.split(","))
    # finishing candidates (None: the weights' own at each level)
    gain_grid, detail_grid, sigma_grid, kept_grid, cells_grid, match_grid = (
        parse_list(text, float, option) if text else None
        for text, option in [(gains, "--gains"), (detail_gains, "--detail-gains"),
                             (detail_sigmas, "--detail-sigmas"), (kept_noises, "--kept-noise"),
                             (lattice_cells, "--lattice-cells"), (detail_matches, "--detail-match")])
    period_grid = parse_list(lattice_periods, int, "--lattice-periods") if lattice_periods else None
    for start, end, power, update in grid:
        fields = {"start_time": start, "end_time": end, "eta": 0.0, "renoise": False, **variants[update],
                  "grid_power": power}
        decoder = DiffusionDecoder(shipped.model, dataclasses.replace(shipped.settings, **fields),
                                   restorer=shipped.restorer)
        for level in level_list:
            own = decoder.settings.finishing(level)
            candidates = [Finishing(gain, gain if detail is None else detail, kept, sigma, period, cells, match,
                                    own.detail_match_bounds)
                          for gain, detail, sigma, kept, period, cells, match in itertools.product(
                              gain_grid or [own.gain], detail_grid or [None if gain_grid else own.detail_gain],
                              sigma_grid or [own.detail_sigma], kept_grid or [own.kept_noise],
                              period_grid or [own.lattice_period], cells_grid or [own.lattice_cells],
                              match_grid or [own.detail_match])]
            # the encoder's detail maps, measured against what the model enhances
            maps = [detail_map.measure(np.asarray(original), decoder.conditioning(base, level))
                    for original, base in zip(originals, bases[level], strict=True)]
            rows: dict[Finishing, list[str]] = {}
            for steps in parse_list(step_counts, int, "--steps"):
                sampled = [decoder.sample(base, level, steps, fast=True) for base in bases[level]]
                share = decoder.settings.finishing_share(steps)
                for finishing in candidates:
                    decoded = [decoder.to_image(base, parts.finished(finishing.share(share), measured))
                               for (base, parts), measured in zip(sampled, maps, strict=True)]
                    rows.setdefault(finishing, []).append(f"{steps:2d}: {score(decoded)}")
            for f, row in rows.items():
                print(f"start {start:.2f} end {end:.2f} power {per_level(decoder.settings.grid_power, level):.2f} "
                      f"{update:7s} gain {f.gain:.2f} detail {f.detail_gain:.2f} "
                      f"sigma {f.detail_sigma:.1f} kept noise {f.kept_noise:.2f} "
                      f"lattice {f.lattice_period}/{f.lattice_cells:g} match {f.detail_match:.2f} level {level:g} | "
                      + " | ".join(row),
                      flush=True)


if __name__ == "__main__":
    main()
