"""Show the U-Net's grid-locked lattice and what taking it out does, on one photo.

Four panels of a crop, zoomed: the original, the 0-step decode, and the same sampling
finished with the shipped settings without and with the lattice taken out (the weights'
lattice_period, or 8 where it is 0). Figures under each panel are for the whole image:
PSNR, LPIPS on AlexNet features (what the evaluation reports) and on VGG16 features. It
also prints the share of the last prediction's energy that the lattice holds.

    python scripts/lattice_picture.py ../shared/data/train/bsds500/105019.jpg --level 1 --box 130,150,100 \
        -o docs/lattice.png
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import numpy as np
from PIL import Image

from diraccodec import api
from diraccodec.cli import parse_list
from diraccodec.diffusion.decoder import DiffusionDecoder
from diraccodec.evaluation.metrics import lpips, psnr
from diraccodec.evaluation.pictures import labelled_panel, side_by_side
from diraccodec.image.files import write_image
from diraccodec.transforms.layers import periodic_component


@click.command()
@click.argument("photo", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--level", type=float, default=1.0, show_default=True)
@click.option("--steps", type=int, default=5, show_default=True)
@click.option("--box", required=True, help="left,top,size of the crop, in pixels.")
@click.option("--zoom", type=int, default=4, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(photo: Path, level: float, steps: int, box: str, zoom: int, output: Path) -> None:
    image = Image.open(photo).convert("RGB")
    data = api.encode(image, level, search_passes=0)
    decoder = api.get_diffusion(api.get_codec())
    shipped = decoder.settings.finishing(level, steps)
    period = shipped.lattice_period or 8
    base, parts = decoder.sample(np.asarray(api.decode(data, restore=False)), level, steps)

    lattice = periodic_component(parts.prediction, period, shipped.lattice_cells)
    share = lattice.pow(2).sum() / (parts.prediction - parts.prediction.mean()).pow(2).sum()
    print(f"the {period}-pixel lattice holds {share:.1%} of the prediction's energy (about its mean)")

    left, top, size = parse_list(box, int, "--box")
    region = (left, top, left + size, top + size)

    def panel(decoded: Image.Image, title: str) -> Image.Image:
        figures = (f"{psnr(image, decoded):.2f} dB  LPIPS {lpips(image, decoded):.3f}  "
                   f"VGG {lpips(image, decoded, 'vgg16'):.3f}")
        print(f"{title}: {figures}")
        return labelled_panel(decoded.crop(region), zoom, title, figures)

    def finished(lattice_period: int) -> Image.Image:
        residual = parts.finished(dataclasses.replace(shipped, lattice_period=lattice_period))
        return Image.fromarray(DiffusionDecoder.to_image(base, residual))

    panels = [labelled_panel(image.crop(region), zoom, "original", f"{photo.name}, level {level:g}"),
              panel(api.decode(data), "0 steps"),
              panel(finished(0), f"{steps} steps, lattice kept"),
              panel(finished(period), f"{steps} steps, {period}-pixel lattice out")]
    write_image(output, side_by_side(panels))


if __name__ == "__main__":
    main()
