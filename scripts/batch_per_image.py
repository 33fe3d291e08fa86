"""Seconds per image of `dirac batch` once its workers run: the local pool against Ray.

    python scripts/batch_per_image.py PHOTOS --workers 4 --runs 5    # docs/cluster.md

A whole command also pays start-up (Ray's instance, each worker's torch import and model
load), which says nothing about how either scales; nor do the first files, while Ray's actors
are still starting one after another (the local pool's workers fork with the models loaded),
or the last, while some workers already idle. So this times the middle half of the results:
the gap between the files that finish a quarter and three quarters of the way, over the files
between them. It does so for an encode of the folder (at `dirac encode`'s default effort) and
a decode of the result at 0 steps, both in the local pool and on Ray (`--address`; by default
the cluster `ray start` runs on this machine, else an instance of its own). It prints the
median over the runs, with the lowest and highest in brackets, and checks that both convert
to the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from diraccodec import api
from diraccodec.batch import BatchSettings, Job, JobResult, plan_jobs, run_batch, run_batch_on_ray

Convert = Callable[[list[Job], BatchSettings, Callable[[JobResult], None]], list[JobResult]]


def seconds_per_image(convert: Convert, source: Path, target: Path, settings: BatchSettings) -> float:
    shutil.rmtree(target, ignore_errors=True)
    arrivals: list[float] = []
    started = time.monotonic()
    jobs = plan_jobs(source, target, settings)
    results = convert(jobs, settings, lambda _: arrivals.append(time.monotonic() - started))
    if len(arrivals) < 8 or any(result.status != "converted" for result in results):
        raise SystemExit(f"{source}: needs at least 8 images that convert")
    first, last = (len(arrivals) - 1) // 4, 3 * (len(arrivals) - 1) // 4
    return (arrivals[last] - arrivals[first]) / (last - first)


def spread(values: list[float]) -> str:
    return f"[{min(values):.3f}-{max(values):.3f}]"


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path, help="A folder of images (at least 8).")
    parser.add_argument("--workers", type=int, default=2, help="Workers in each (default 2).")
    parser.add_argument("--runs", type=int, default=3, help="Runs of each (default 3); the median is printed.")
    parser.add_argument("--address", default="auto",
                        help="Ray's address (default: the cluster `ray start` runs here, else an instance of its own).")
    parser.add_argument("--quality", type=float, default=3.0, help="Level of the encode (default 3).")
    args = parser.parse_args()

    api.get_codec()  # as the CLI does before its workers start
    settings = BatchSettings(quality=args.quality)
    ways: dict[str, Convert] = {
        "local": lambda jobs, s, seen: run_batch(jobs, s, args.workers, seen),
        "ray": lambda jobs, s, seen: run_batch_on_ray(jobs, s, args.address, args.workers, seen),
    }
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        timings: dict[tuple[str, str], list[float]] = {(way, kind): [] for way in ways for kind in ("encode", "decode")}
        for _ in range(args.runs):
            for way, convert in ways.items():
                encoded, decoded = out / f"{way}-encoded", out / f"{way}-decoded"
                timings[way, "encode"].append(seconds_per_image(convert, args.photos, encoded, settings))
                timings[way, "decode"].append(seconds_per_image(convert, encoded, decoded, settings))
        same = all(files_under(out / f"local-{kind}") == files_under(out / f"ray-{kind}")
                   for kind in ("encoded", "decoded"))
    print(f"{args.photos}, {args.workers} workers, median of {args.runs} runs, seconds per image once running:")
    for kind in ("encode", "decode"):
        local, ray = (statistics.median(timings[way, kind]) for way in ways)
        local_range, ray_range = (spread(timings[way, kind]) for way in ways)
        print(f"  {kind}: local {local:.3f} {local_range}, Ray {ray:.3f} {ray_range} ({100 * (ray / local - 1):+.0f}%)")
    print("  outputs byte-identical" if same else "  OUTPUTS DIFFER")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
