"""What handing every finished tile's memory back to the system costs small images.

    python scripts/trim_cost.py ../shared/data/kodak/kodim01.png ../shared/data/kodak/kodim05.png --rounds 6

In one process, per image: an encode at the default effort, one at effort 1 and a 0-step
decode, first with `malloc_trim` after every tile (as for images above TRIM_ABOVE_PIXELS),
then with the codec's own rule, in turns for --rounds rounds; seconds per megapixel, the
median of the rounds, on the CPU in the default (fast) mode. The files are the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diraccodec import api  # noqa: E402
from diraccodec.transforms import search, tiling  # noqa: E402

STAGES = ("effort 2 encode", "effort 1 encode", "0-step decode")


def trim_always(image_pixels: int) -> None:
    if (trim := tiling._malloc_trim()) is not None:
        trim(0)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("images", type=Path, nargs="+")
    cli.add_argument("--rounds", type=int, default=6)
    cli.add_argument("--quality", type=float, default=3.0)
    arguments = cli.parse_args()
    rules = {"trimming always": trim_always, "the rule": tiling.return_freed_memory}
    print("| image | megapixels | " + " | ".join(f"{stage}: {' / '.join(rules)}" for stage in STAGES)
          + " |\n|---|---:|" + "---:|" * len(STAGES))
    for path in arguments.images:
        image = Image.open(path).convert("RGB")
        megapixels = image.width * image.height / 1e6
        api.decode(api.encode(image, arguments.quality), 0)  # a warm-up: loading and first calls
        seconds: dict[str, dict[str, list[float]]] = {rule: {stage: [] for stage in STAGES} for rule in rules}
        for _ in range(arguments.rounds):
            for rule, release in rules.items():
                tiling.return_freed_memory = search.return_freed_memory = release
                started = time.perf_counter()
                data = api.encode(image, arguments.quality)
                searched = time.perf_counter()
                api.encode(image, arguments.quality, effort=1)
                rounded = time.perf_counter()
                api.decode(data, 0)
                spans = (searched - started, rounded - searched, time.perf_counter() - rounded)
                for stage, span in zip(STAGES, spans, strict=True):
                    seconds[rule][stage].append(span / megapixels)
        cells = [" / ".join(f"{statistics.median(seconds[rule][stage]):.3f}" for rule in rules) for stage in STAGES]
        print(f"| {path.name} | {megapixels:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
