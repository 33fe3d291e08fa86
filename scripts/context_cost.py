"""What a checkerboard context model costs the base codec on the CPU, against the same weights without it.

    python scripts/context_cost.py ../shared/data/kodak --images 4 --repeat 3

The context model is added to the base weights (default: the shipped ones) with its last
layer at zero, so both codecs make the same symbols and the timings differ only by the
context's work: its float64 parameters at the non-anchors, and the search run in two halves.
Prints the seconds per megapixel of each stage (the fastest of --repeat, summed over the
images), and checks that both decode the same pixels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diraccodec.codec.base_codec import BaseCodec  # noqa: E402
from diraccodec.image.planes import IMAGE_SUFFIXES  # noqa: E402
from diraccodec.modelfiles import default_weights_path, export_base_weights, load_base_weights  # noqa: E402
from diraccodec.training.base import model_from_weights  # noqa: E402
from diraccodec.transforms.search import SearchSettings  # noqa: E402


def fastest(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def time_stages(codec: BaseCodec, rgb: np.ndarray, quality: float, repeat: int) -> dict[str, float]:
    """Seconds of each stage of one image's coding."""
    height, width = rgb.shape[:2]
    y = codec.analysis_latents(rgb)
    stream = codec.compress(rgb, quality)
    search = SearchSettings(passes=1)
    return {
        "entropy parameters, rounding": fastest(repeat, lambda: codec.quantize(y, quality)),
        "entropy parameters, one-pass search": fastest(repeat, lambda: codec.quantize(y, quality, rgb, search)),
        "read stream": fastest(repeat, lambda: codec.read_stream(stream, width, height)),
        "whole base decode": fastest(repeat, lambda: codec.decompress(stream, width, height, quality)),
    }


def with_context(weights: Path, folder: Path) -> Path:
    path = folder / "base-context.safetensors"
    export_base_weights(model_from_weights(load_base_weights(weights).model, "checkerboard"), path,
                        {"purpose": "timing"})
    return path


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("folder", type=Path)
    cli.add_argument("--images", type=int, default=4, help="The first N images of the folder (default 4).")
    cli.add_argument("--quality", type=float, default=4.0)
    cli.add_argument("--repeat", type=int, default=3)
    cli.add_argument("--weights", type=Path, default=None, help="Base weights (default: the shipped ones).")
    arguments = cli.parse_args()
    paths = sorted(p for p in arguments.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: arguments.images]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    megapixels = sum(image.shape[0] * image.shape[1] for image in images) / 1e6
    quality = arguments.quality
    with tempfile.TemporaryDirectory() as folder:
        weights = arguments.weights or default_weights_path()
        codecs = {"plain": BaseCodec(load_base_weights(weights)),
                  "checkerboard": BaseCodec(load_base_weights(with_context(weights, Path(folder))))}
        seconds = {name: {} for name in codecs}
        for rgb in images:  # the codecs take turns, so that a drift of the machine's speed hits both
            for name, codec in codecs.items():
                for stage, spent in time_stages(codec, rgb, quality, arguments.repeat).items():
                    seconds[name][stage] = seconds[name].get(stage, 0.0) + spent
        for rgb in images:
            height, width = rgb.shape[:2]
            decoded = [codec.decompress(codec.compress(rgb, quality), width, height, quality)
                       for codec in codecs.values()]
            assert np.array_equal(*decoded), "the two codecs decode different pixels"
    print(f"{len(images)} images, {megapixels:.2f} MP, level {quality:g}; seconds per megapixel")
    print("| stage | plain | checkerboard | change |\n|---|---:|---:|---:|")
    for stage, plain in seconds["plain"].items():
        context = seconds["checkerboard"][stage]
        print(f"| {stage} | {plain / megapixels:.3f} | {context / megapixels:.3f} | {context / plain - 1:+.0%} |")


if __name__ == "__main__":
    main()
