"""What a checkerboard context model costs the base codec on the CPU, against the same weights without it.

    python scripts/context_cost.py ../shared/data/kodak --images 4 --repeat 3

The context model is added to the base weights (default: the shipped ones) with its last
layer at zero, so both codecs make the same symbols and the timings differ only by the
context's work: its parameters at the non-anchors, and the search run in two halves.
Prints the seconds per megapixel of each stage (the fastest of --repeat, summed over the
images), and checks that both decode the same pixels.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _variant_timing import first_images, variant_timing_parser  # noqa: E402

from diraccodec.bench import fastest  # noqa: E402
from diraccodec.codec.base_codec import BaseCodec  # noqa: E402
from diraccodec.modelfiles import default_weights_path, export_base_weights, load_base_weights  # noqa: E402
from diraccodec.training.base import model_from_weights  # noqa: E402
from diraccodec.transforms.search import SearchSettings  # noqa: E402


def time_stages(codec: BaseCodec, rgb: np.ndarray, quality: float, repeat: int) -> dict[str, float]:
    """Seconds of each stage of one image's coding."""
    height, width = rgb.shape[:2]
    y = codec.analysis_latents(rgb)
    stream = codec.compress(rgb, quality)
    search = SearchSettings(passes=1)
    return {
        "entropy parameters, rounding": fastest(repeat, lambda: codec.quantize(y, quality))[0],
        "entropy parameters, one-pass search": fastest(repeat, lambda: codec.quantize(y, quality, rgb, search))[0],
        "read stream": fastest(repeat, lambda: codec.read_stream(stream, width, height, quality))[0],
        "whole base decode": fastest(repeat, lambda: codec.decompress(stream, width, height, quality))[0],
    }


def with_context(weights: Path, folder: Path) -> Path:
    path = folder / "base-context.safetensors"
    export_base_weights(model_from_weights(load_base_weights(weights).model, "checkerboard"), path,
                        {"purpose": "timing"})
    return path


def main() -> None:
    cli = variant_timing_parser(__doc__)
    cli.add_argument("--weights", type=Path, default=None, help="Base weights (default: the shipped ones).")
    arguments = cli.parse_args()
    images, megapixels = first_images(arguments.folder, arguments.images)
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
