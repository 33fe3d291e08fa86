"""What hyper-latent tables per level save: files of base weights that carry them against the
files of the weights they were made from (the same model, its shared tables alone), per level.

    python scripts/level_tables_gain.py ../shared/data/kodak
    python scripts/level_tables_gain.py ../shared/data/train --held-out
    python scripts/level_tables_gain.py ../shared/data/kodak --weights runs/levels/base.safetensors

`--weights`: base weights with tables per level (`dirac train level-tables`; default the
shipped ones). Both encode at effort 1 (plain rounding), so they code the same symbols and only
the hyper-latents' tables differ; the script checks that the first image's base synthesis is
the same at every level. Prints the bits per pixel of both and the change, summed over the images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import diraccodec  # noqa: E402
from diraccodec.evaluation.run import load_images  # noqa: E402
from diraccodec.modelfiles import default_weights_path, write_shared_tables_copy  # noqa: E402

LEVELS = (0, 0.5, 1, 2, 3, 4, 5, 6, 7, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--weights", type=Path, default=None,
                        help="Base weights with tables per level (default: the shipped ones).")
    parser.add_argument("--held-out", action="store_true", help="The held-out training photos under the folder.")
    args = parser.parse_args()
    weights = (args.weights or default_weights_path()).resolve()
    images = load_images(args.folder, args.held_out)
    pixels = sum(image.width * image.height for image in images)
    with tempfile.TemporaryDirectory() as folder:
        shared_weights = Path(folder) / "base.safetensors"
        write_shared_tables_copy(weights, shared_weights)
        print("| level | shared tables (bpp) | tables per level (bpp) | change |\n|---:|---:|---:|---:|")
        for level in LEVELS:
            print(row(level, images, pixels, shared_weights, weights))


def row(level: float, images: list, pixels: int, shared_weights: Path, weights: Path) -> str:
    """One level's table row: both sets of files, checked to reconstruct alike."""
    shared = [diraccodec.encode(image, level, effort=1, weights=shared_weights) for image in images]
    counted = [diraccodec.encode(image, level, effort=1, weights=weights) for image in images]
    same = np.array_equal(np.asarray(diraccodec.decode(shared[0], weights=shared_weights, restore=False)),
                          np.asarray(diraccodec.decode(counted[0], weights=weights, restore=False)))
    if not same:
        raise SystemExit(f"level {level:g}: the base synthesis differs: these weights do not reconstruct alike")
    before, after = sum(map(len, shared)), sum(map(len, counted))
    change = 100 * (after / before - 1)
    return f"| {level:g} | {8 * before / pixels:.4f} | {8 * after / pixels:.4f} | {change:+.2f}% |"


if __name__ == "__main__":
    main()
