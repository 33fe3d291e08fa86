"""What wider analysis and synthesis transforms, more latents, and a context model cost the
CPU, before any of them is trained.

    python scripts/architecture_cost.py ../shared/data/kodak --widths 96/96,192/96,96/96/320+checkerboard

Each WIDTHS entry is ANALYSIS/SYNTHESIS, optionally /LATENTS (M) and +checkerboard. Its base
weights grow out of the shipped ones (diraccodec.training.widening), a context model starting
at zero beside them: the new parts give nothing to the old, and new latents are 0, so every
variant makes the shipped base's symbols, plus zeros for new latents (the search may move one
where that pays), and the timings differ only by the work. The shipped restoration filter is
tied to each grown base, so that the encoder's search and the 0-step decode run as they do
with the shipped weights. The variants take turns on every image, after a warm-up round, so
that a drift of the machine's speed hits them all; each stage is the fastest of --repeat
runs, summed over the images, in seconds per megapixel, in the default (fast) mode.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _variant_timing import first_images, variant_timing_parser  # noqa: E402

from diraccodec import api  # noqa: E402
from diraccodec.bench import fastest  # noqa: E402
from diraccodec.container import drc  # noqa: E402
from diraccodec.evaluation.metrics import psnr  # noqa: E402
from diraccodec.modelfiles import (  # noqa: E402
    RESTORATION_ENV,
    default_weights_path,
    export_base_weights,
    export_restoration_weights,
    load_base_weights,
    load_restoration_weights,
)
from diraccodec.options import CONTEXTS  # noqa: E402
from diraccodec.training.base import model_from_weights  # noqa: E402

STAGES = ("analysis", "encode, effort 1", "encode, effort 2 (default)", "encode, effort 3", "synthesis",
          "decode, 0 steps")
Variant = tuple[int, int, int | None, str]  # analysis width, synthesis width, latents (None: M), context model


def grown_weights(variant: Variant, folder: Path) -> tuple[Path, Path]:
    """Base weights of these widths and context model grown out of the shipped ones, and the
    shipped restoration filter tied to them, in a folder of their own."""
    folder.mkdir()
    base = load_base_weights(default_weights_path())
    path = folder / "base.safetensors"
    analysis, synthesis, latents, context = variant
    export_base_weights(model_from_weights(base.model, context, analysis_channels=analysis,
                                           synthesis_channels=synthesis, latent_channels=latents),
                        path, {"purpose": "timing"})
    restoration = load_restoration_weights()
    if restoration is None:
        raise SystemExit("the shipped restoration filter is not installed")
    filter_path = folder / "restoration.safetensors"
    export_restoration_weights(restoration.model, load_base_weights(path).weights_id, filter_path,
                               {"purpose": "timing"})
    return path, filter_path


def time_stages(rgb: np.ndarray, weights: Path, quality: float, repeat: int) -> tuple[dict[str, float], int, float]:
    """Seconds of each stage on one image, the default encode's size in bytes and its PSNR at 0 steps."""
    codec = api.get_codec(weights, api.compute_for("cpu", False))
    if api.get_restorer(codec) is None:
        raise SystemExit(f"no restoration filter for {weights}")
    height, width = rgb.shape[:2]
    image = Image.fromarray(rgb)
    seconds: dict[str, float] = {}
    seconds["analysis"], _ = fastest(repeat, lambda: codec.analysis_latents(rgb))
    seconds["encode, effort 1"], _ = fastest(repeat, lambda: api.encode(image, quality, effort=1, weights=weights))
    seconds["encode, effort 2 (default)"], encoded = fastest(
        repeat, lambda: api.encode(image, quality, weights=weights))
    seconds["encode, effort 3"], _ = fastest(repeat, lambda: api.encode(image, quality, effort=3, weights=weights))
    latents = codec.read_stream(api.inspect(encoded).header.sections[drc.TAG_LATENTS], width, height, quality)
    seconds["synthesis"], _ = fastest(repeat, lambda: codec.synthesize(latents, width, height, quality))
    seconds["decode, 0 steps"], decoded = fastest(repeat, lambda: api.decode(encoded, 0, weights=weights))
    return seconds, len(encoded), psnr(image, decoded)


def parse_variants(text: str) -> list[Variant]:
    """ANALYSIS/SYNTHESIS[/LATENTS][+CONTEXT] entries, comma-separated."""
    variants = []
    for entry in text.split(","):
        widths, _, context = entry.partition("+")
        try:
            numbers = [int(value) for value in widths.split("/")]
            if len(numbers) not in (2, 3):
                raise ValueError
        except ValueError:
            raise SystemExit(f"--widths takes ANALYSIS/SYNTHESIS[/LATENTS][+CONTEXT] entries, got {entry}") from None
        if (context or "none") not in CONTEXTS:
            raise SystemExit(f"unknown context model {context!r} in {entry} (one of {', '.join(CONTEXTS)})")
        variants.append((numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None, context or "none"))
    return variants


def variant_name(variant: Variant) -> str:
    analysis, synthesis, latents, context = variant
    return (f"{analysis}/{synthesis}" + ("" if latents is None else f"/{latents}")
            + ("" if context == "none" else f"+{context}"))


def main() -> None:
    cli = variant_timing_parser(__doc__)
    cli.add_argument("--widths", type=parse_variants, default=parse_variants("96/96,192/96,144/144,192/192"),
                     help="ANALYSIS/SYNTHESIS[/LATENTS][+CONTEXT] entries, each at least the shipped width; "
                          "+checkerboard adds a context model (default 96/96,192/96,144/144,192/192).")
    arguments = cli.parse_args()
    images, megapixels = first_images(arguments.folder, arguments.images)
    names = [variant_name(variant) for variant in arguments.widths]
    seconds = {name: dict.fromkeys(STAGES, 0.0) for name in names}
    sizes, mean_psnr = dict.fromkeys(names, 0), dict.fromkeys(names, 0.0)
    with tempfile.TemporaryDirectory() as temporary:
        files = {name: grown_weights(variant, Path(temporary) / name.replace("/", "-"))
                 for name, variant in zip(names, arguments.widths, strict=True)}
        for weights, restoration in files.values():  # a warm-up round: first calls load and plan
            os.environ[RESTORATION_ENV] = str(restoration)
            time_stages(images[0], weights, arguments.quality, 1)
        for rgb in images:  # the variants take turns
            for name, (weights, restoration) in files.items():
                os.environ[RESTORATION_ENV] = str(restoration)
                spent, size, image_psnr = time_stages(rgb, weights, arguments.quality, arguments.repeat)
                sizes[name] += size
                mean_psnr[name] += image_psnr / len(images)
                for stage in STAGES:
                    seconds[name][stage] += spent[stage]
    print(f"{len(images)} images, {megapixels:.2f} MP, level {arguments.quality:g}; seconds per megapixel")
    print("| stage | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for stage in STAGES:
        print(f"| {stage} | " + " | ".join(f"{seconds[name][stage] / megapixels:.3f}" for name in names) + " |")
    print("| bpp at the default effort | " + " | ".join(f"{8 * sizes[name] / megapixels / 1e6:.4f}" for name in names)
          + " |")
    print("| PSNR at the default effort, 0 steps (dB) | " + " | ".join(f"{mean_psnr[name]:.3f}" for name in names)
          + " |")


if __name__ == "__main__":
    main()
