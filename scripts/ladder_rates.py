"""Where a lower rate ladder starts: level 1's rate for candidate lambdas, before any training.

    python scripts/ladder_rates.py ../shared/data/train/bsds500 --images 16 --lowest 0.0005,0.0002,0.0001

For each candidate, level 1's lambda is replaced and its gains carried over from the base
weights' ladder as a new run would start them (`diraccodec.training.base.model_from_weights`:
extended along the end segment below the lowest level). Prints the bits per pixel of the
latent streams and the PSNR (of the pooled squared error) of the base synthesis at level 1,
plainly rounded. It reads training photos only: the held-out ones are skipped, and the
evaluation set is never used to choose `dirac train base --lambdas`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diraccodec.codec.base_codec import BaseCodec  # noqa: E402
from diraccodec.codec.hyperprior import MultiRateHyperprior  # noqa: E402
from diraccodec.modelfiles import default_weights_path, export_base_weights, load_base_weights  # noqa: E402
from diraccodec.training.base import model_from_weights  # noqa: E402
from diraccodec.training.data import training_images  # noqa: E402


def with_lowest(start: MultiRateHyperprior, lowest: float, folder: Path) -> BaseCodec:
    """A codec whose level 1 has lambda `lowest`, its gains as a new run would start them."""
    model = model_from_weights(start, lambdas=(lowest, *start.config.lambdas[1:]))
    path = folder / f"base-{lowest:g}.safetensors"
    export_base_weights(model, path, {"purpose": "ladder"})
    return BaseCodec(load_base_weights(path))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("folder", type=Path)
    cli.add_argument("--images", type=int, default=16, help="The first N images of the folder (default 16).")
    cli.add_argument("--lowest", default="0.0005,0.0003,0.0002,0.00015,0.0001",
                     help="Candidate lambdas of level 1, comma-separated.")
    cli.add_argument("--weights", type=Path, default=None, help="Base weights (default: the shipped ones).")
    arguments = cli.parse_args()
    paths = training_images([arguments.folder])[: arguments.images]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    pixels = sum(image.shape[0] * image.shape[1] for image in images)
    start = load_base_weights(arguments.weights or default_weights_path()).model
    print(f"{len(images)} images, {pixels / 1e6:.2f} MP, level 1, plain rounding")
    print("| lambda of level 1 | bpp | PSNR dB |\n|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for lowest in (float(value) for value in arguments.lowest.split(",")):
            codec = with_lowest(start, lowest, Path(folder))
            bits, squared = 0, 0.0
            for rgb in images:
                stream = codec.compress(rgb, 1.0)
                decoded = codec.decompress(stream, rgb.shape[1], rgb.shape[0], 1.0)
                bits += 8 * len(stream)
                squared += float(np.sum((decoded.astype(np.float64) - rgb) ** 2))
            psnr = 10 * np.log10(255**2 / (squared / (pixels * 3)))
            print(f"| {lowest:g} | {bits / pixels:.4f} | {psnr:.2f} |")


if __name__ == "__main__":
    main()
