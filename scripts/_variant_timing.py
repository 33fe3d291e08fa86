"""The command line the scripts that time variants of the base codec share
(context_cost.py, architecture_cost.py): the first images of a folder, timed in turns."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from diraccodec.image.planes import images_in


def variant_timing_parser(description: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("folder", type=Path)
    cli.add_argument("--images", type=count, default=4, help="The first N images of the folder (default 4).")
    cli.add_argument("--quality", type=float, default=4.0)
    cli.add_argument("--repeat", type=count, default=3)
    return cli


def count(text: str) -> int:
    """A count on a command line that times things: none would time nothing (an infinite time)."""
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def first_images(folder: Path, number: int) -> tuple[list[np.ndarray], float]:
    """The first `number` images of `folder` in name order, as RGB arrays, and their megapixels."""
    images = [np.asarray(Image.open(path).convert("RGB")) for path in images_in(folder)[:number]]
    return images, sum(image.shape[0] * image.shape[1] for image in images) / 1e6
