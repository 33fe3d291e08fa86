"""Where a file's bytes go, per level: hyper-latents, latents, detail map and container.

    python scripts/stream_shares.py ../shared/data/kodak --levels 0,1,2,4,8

Encodes every image of the folder at each level (default effort) and splits the files' bytes,
summed over the images: the latent stream between the hyper-latents (the side information)
and the latents, by each part's information content (`diraccodec.api.stream_bytes`; the
stream's last few bytes of coder overhead go with the container), the detail map's section,
and the rest (header, section headers, checksum). The side information's share is what a
rate-aware hyperprior could win back at the low levels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diraccodec import api  # noqa: E402
from diraccodec.container import drc  # noqa: E402
from diraccodec.evaluation.run import load_images  # noqa: E402


def shares(images: list, level: float) -> dict[str, float]:
    """Bytes of each part, summed over the images, and their pixels."""
    parts = dict.fromkeys(("file", "hyper-latents", "latents", "detail map", "container"), 0.0)
    pixels = 0
    for image in images:
        data = api.encode(image, level)
        split = api.stream_bytes(data)
        detail = len(api.inspect(data).header.sections.get(drc.TAG_DETAIL, b""))
        parts["file"] += len(data)
        parts["hyper-latents"] += split.hyper_latents
        parts["latents"] += split.latents
        parts["detail map"] += detail
        parts["container"] += len(data) - split.hyper_latents - split.latents - detail
        pixels += image.width * image.height
    return {"pixels": pixels, **parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--levels", default="0,1,2,4,8", help="Comma-separated rate levels (default 0,1,2,4,8).")
    parser.add_argument("--images", type=int, default=None, help="The first N images only.")
    args = parser.parse_args()
    images = load_images(args.folder)[: args.images]
    command = f"python scripts/stream_shares.py {args.folder} --levels {args.levels}"
    command += f" --images {args.images}" if args.images else ""
    print(f"`{command}`: {len(images)} images\n")
    print("| level | bpp | hyper-latents | latents | detail map | container |")
    print("|---:|---:|---:|---:|---:|---:|")
    for level in (float(text) for text in args.levels.split(",")):
        parts = shares(images, level)
        cells = [f"{100 * parts[name] / parts['file']:.1f}%"
                 for name in ("hyper-latents", "latents", "detail map", "container")]
        print(f"| {level:g} | {8 * parts['file'] / parts['pixels']:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
