"""BD-rates of our curves in one evaluation JSON against the reference codecs of another.

The perception run (`dirac eval --steps ...`) compares against AVIF and JPEG XL only, for
time; the rate-distortion run has JPEG and WebP as well. Both decode the same images with
the same base weights, so their points can be pooled:

    python scripts/bd_rates_across.py docs/perception-kodak.json docs/rd-kodak.json

--updated-by takes a later run of some of our settings (one level measured again after a
change that touched only it): its points replace those of the same curve and setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from diraccodec.evaluation.run import bd_rates, is_ours, points_of, pooled_points


@click.command()
@click.argument("ours_json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("references_json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--updated-by", "updates", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True)
def main(ours_json: Path, references_json: Path, updates: tuple[Path, ...]) -> None:
    ours = [p for p in pooled_points([json.loads(source.read_text()) for source in (ours_json, *updates)])
            if is_ours(p.codec)]
    references = [p for p in points_of(json.loads(references_json.read_text())) if not is_ours(p.codec)]
    for metric in ("psnr", "lpips"):
        click.echo(f"BD-rate ({metric}), %:")
        for curve, against in bd_rates(ours + references, metric).items():
            click.echo(f"  {curve:24} " + "  ".join(f"{name} {value:+.1f}" for name, value in against.items()))


if __name__ == "__main__":
    main()
