"""Store chosen sampler settings in a diffusion weights file (the model stays as trained).

The finishing gains and kept noise are given per level (values at levels 1, 2, 3, ...), as
chosen with scripts/tune_sampler.py on training photos; other settings keep their values
unless given.

    python scripts/set_sampler.py weights/diffusion.safetensors --gains 1,1,1.1 --detail-gains 2.4,2.2,1.6 \
        --kept-noise 0.45,0.45,0.3
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from diraccodec.cli import parse_list
from diraccodec.modelfiles import load_diffusion_weights, replace_sampler_settings


def per_level(text: str | None, option: str) -> tuple[float, ...] | None:
    return None if text is None else tuple(parse_list(text, float, option))


@click.command()
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--gains", default=None, help="Gain on the last prediction at levels 1, 2, 3, ...")
@click.option("--detail-gains", default=None,
              help="Gain on the last prediction's detail at levels 1, 2, ... ('none': the gain's).")
@click.option("--detail-sigma", type=float, default=None, help="Sigma (pixels) of the blur that splits off the detail.")
@click.option("--kept-noise", default=None, help="Share of the noise left at the grid's end, at levels 1, 2, ...")
@click.option("--lattice-period", type=click.IntRange(0), default=None,
              help="Period (pixels) of the lattice taken out of the last prediction (0: none).")
@click.option("--lattice-cells", type=float, default=None, help="Periods over which the lattice is measured.")
@click.option("--full-steps", type=click.IntRange(0), default=None,
              help="Steps from which the finishing applies in full; fewer apply steps/full-steps of it (0: always).")
@click.option("--grid-powers", default=None, help="Spacing of the grid at levels 1, 2, ... (1: even).")
@click.option("--detail-match", default=None,
              help="Share of the encoder's detail map the fine detail is scaled to, at levels 1, 2, ... (0: none).")
@click.option("--start", "start_time", type=float, default=None)
@click.option("--end", "end_time", type=float, default=None)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write (default: over WEIGHTS, atomically, updating the manifest).")
def main(weights: Path, gains: str | None, detail_gains: str | None, detail_sigma: float | None,
         kept_noise: str | None, lattice_period: int | None, lattice_cells: float | None, full_steps: int | None,
         grid_powers: str | None, detail_match: str | None, start_time: float | None, end_time: float | None,
         output: Path | None) -> None:
    loaded = load_diffusion_weights(weights)
    assert loaded is not None
    changes = {"residual_gain": per_level(gains, "--gains"), "kept_noise": per_level(kept_noise, "--kept-noise"),
               "start_time": start_time, "end_time": end_time, "detail_sigma": detail_sigma,
               "lattice_period": lattice_period, "lattice_cells": lattice_cells, "full_steps": full_steps,
               "grid_power": per_level(grid_powers, "--grid-powers"),
               "detail_match": per_level(detail_match, "--detail-match")}
    settings = dataclasses.replace(loaded.settings, **{k: v for k, v in changes.items() if v is not None})
    if detail_gains is not None:  # 'none': one gain on all of the prediction again
        detail = None if detail_gains == "none" else per_level(detail_gains, "--detail-gains")
        settings = dataclasses.replace(settings, detail_gain=detail)
    replace_sampler_settings(weights, settings, output or weights)
    print(f"{output or weights}: {settings}")


if __name__ == "__main__":
    main()
