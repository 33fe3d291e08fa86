"""What the encoder's search for cheaper symbols buys, on training photos (never Kodak).

For every level and number of passes it encodes each photo as `dirac encode` does (the
search counting the error after the restoration filter), decodes the real file (base
synthesis and restored), and prints the training objective lambda*255^2*MSE + bpp against
plain rounding, with bpp, PSNR and the search's seconds per megapixel. At one level a
change of the objective is, to first order, the bits saved at equal distortion, so
-3% of the objective is about -3% rate where the rate is most of it.

    python scripts/search_gain.py ../shared/data/train/bsds500 --images 16 --levels 1,4,8 --passes 0,2,4,8
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
from PIL import Image

from diraccodec import api
from diraccodec.evaluation.metrics import bd_rate
from diraccodec.training.data import list_images
from diraccodec.transforms.search import SearchSettings


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--images", type=int, default=16, show_default=True, help="Every n-th photo, this many.")
@click.option("--levels", default="1,4,8", show_default=True)
@click.option("--passes", "passes_text", default="0,2,4,8", show_default=True, help="0 is the plain rounding.")
def main(folder: Path, images: int, levels: str, passes_text: str) -> None:
    codec = api.get_codec()
    restorer = api.get_restorer(codec)
    paths = list_images([folder])
    photos = []
    for path in paths[:: max(1, len(paths) // images)][:images]:
        with Image.open(path) as image:
            photos.append(np.asarray(image.convert("RGB")))
    megapixels = sum(p.shape[0] * p.shape[1] for p in photos) / 1e6
    passes = [int(v) for v in passes_text.split(",")]
    print(f"{len(photos)} photos from {folder}, {megapixels:.2f} MP in all")
    print("| level | passes | bpp | PSNR | restored PSNR | objective | restored objective | search s/MP |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    curves: dict[int, list[tuple[float, float, float]]] = {count: [] for count in passes}
    for level in (float(v) for v in levels.split(",")):
        weight = codec._lambda(level) * 255**2
        reference: tuple[float, float] | None = None
        for count in passes:
            rows, seconds = [], 0.0
            for photo in photos:
                height, width = photo.shape[:2]
                started = time.perf_counter()
                data = codec.compress(photo, level, SearchSettings(count, restorer.model if restorer else None))
                seconds += time.perf_counter() - started if count else 0.0
                base = codec.decompress(data, width, height, level)
                restored = restorer.restore(base, level) if restorer else base
                bpp = 8 * len(data) / (height * width)
                mse = [np.mean((d.astype(np.float64) - photo) ** 2) / 255**2 for d in (base, restored)]
                rows.append((bpp, *(10 * np.log10(1 / m) for m in mse), *(weight * m + bpp for m in mse)))
            bpp, psnr, restored_psnr, objective, restored_objective = np.mean(rows, axis=0)
            reference = reference or (objective, restored_objective)
            curves[count].append((bpp, psnr, restored_psnr))
            change = f"{objective:.4f} ({100 * (objective / reference[0] - 1):+.2f}%)"
            restored_change = f"{restored_objective:.4f} ({100 * (restored_objective / reference[1] - 1):+.2f}%)"
            print(f"| {level:g} | {count} | {bpp:.4f} | {psnr:.2f} | {restored_psnr:.2f} | {change} | "
                  f"{restored_change} | {seconds / megapixels:.1f} |", flush=True)
    if len(curves[passes[0]]) >= 4:
        print(f"\nBD-rate against {passes[0]} passes over these levels (mean bpp, mean PSNR):")
        plain = np.array(curves[passes[0]])
        for count in passes[1:]:
            searched = np.array(curves[count])
            base, restored = (bd_rate(plain[:, 0], plain[:, k], searched[:, 0], searched[:, k]) for k in (1, 2))
            print(f"  {count} passes: {base:+.2f}% (base synthesis), {restored:+.2f}% (restored)")


if __name__ == "__main__":
    main()
