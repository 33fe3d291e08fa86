"""What carrying EXIF and XMP costs: the bytes a .drc file stores for them, over a folder tree.

    python scripts/metadata_sizes.py ../shared/data/train

Reads each image as the encoder does (upright, the EXIF rewritten without its thumbnail,
diraccodec.image.metadata) and prints, for the images that have each part: how many, their
mean size in the input, as carried, and as stored (zlib-compressed, as the file holds it).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diraccodec.image.metadata import compress, read_metadata  # noqa: E402
from diraccodec.image.planes import images_in, open_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder
    paths = images_in(folder, recursive=True)
    sizes: dict[str, list[tuple[int, int, int]]] = {"exif": [], "xmp": []}  # input, carried, stored
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable EXIF: left out, as the encoder leaves it
            image = open_image(path, 10**9)
            metadata = read_metadata(image)
        for name, part in (("exif", metadata.exif), ("xmp", metadata.xmp)):
            if part:
                sizes[name].append((len(image.info[name]), len(part), len(compress(part))))
    print(f"{len(paths)} images under {folder}")
    for name, found in sizes.items():
        means = [sum(column) / len(found) for column in zip(*found, strict=True)] if found else []
        print(f"{name.upper()}: none" if not found else f"{name.upper()}: {len(found)} images, mean bytes "
              f"{means[0]:,.0f} in the input, {means[1]:,.0f} carried, {means[2]:,.0f} stored")


if __name__ == "__main__":
    main()
