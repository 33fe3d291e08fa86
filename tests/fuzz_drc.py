"""Mutation fuzzing of the .drc reader and the whole decoder.

Real .drc files are mutated (bit flips, truncations, insertions, deletions, header fields set
to extremes, sections duplicated or resized), half of them re-sealed with a valid checksum so
that the mutations reach past the CRC into the parser and the entropy decoder. Every input
must either decode or raise a DiracError; anything else, or an input that takes too long, is
a finding.

    python -m tests.fuzz_drc --inputs 1000000 --workers 2    # the long run (docs/robustness.md)

The test suite runs a bounded version (tests/test_robustness.py).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HEADER_FIELDS = {  # offset, struct format
    "version": (4, ">B"),
    "mode": (5, ">B"),
    "quality": (6, ">H"),
    "width": (8, ">I"),
    "height": (12, ">I"),
    "sections": (24, ">H"),
    "first_length": (30, ">I"),
}
EXTREMES = (0, 1, 2, 3, 255, 256, 257, 2047, 2048, 2049, 65535, 65536, 2**31 - 1, 2**32 - 1)
SLOW_SECONDS = 20.0


def reseal(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random mutations of a .drc file; half the results get a valid CRC again."""
    body = bytearray(data[:-4])
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(("flip", "flip", "truncate", "insert", "delete", "field", "field", "duplicate"))
        if kind == "flip" and body:
            position = rng.randrange(len(body))
            body[position] ^= 1 << rng.randrange(8)
        elif kind == "truncate" and body:
            del body[rng.randrange(len(body)):]
        elif kind == "insert":
            position = rng.randrange(len(body) + 1)
            body[position:position] = rng.randbytes(rng.randint(1, 64))
        elif kind == "delete" and body:
            start = rng.randrange(len(body))
            del body[start:start + rng.randint(1, 64)]
        elif kind == "field":
            offset, fmt = HEADER_FIELDS[rng.choice(list(HEADER_FIELDS))]
            limit = 2 ** (8 * struct.calcsize(fmt))
            value = rng.choice(EXTREMES) % limit
            if offset + struct.calcsize(fmt) <= len(body):
                struct.pack_into(fmt, body, offset, value)
        elif kind == "duplicate" and len(body) > 26:
            body += body[26:]
    return reseal(bytes(body)) if rng.random() < 0.5 else bytes(body) + data[-4:]


@dataclass
class FuzzReport:
    inputs: int = 0
    outcomes: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    slowest: float = 0.0


def check(data: bytes, max_pixels: int) -> tuple[str, str | None, float]:
    """(outcome, finding or None, seconds) for one input."""
    from diraccodec import api
    from diraccodec.errors import DiracError
    from diraccodec.image.files import image_bytes

    started = time.perf_counter()
    try:
        image = api.decode(data, max_pixels=max_pixels)
        image_bytes(image, "PNG")
        outcome, finding = "decoded", None
    except DiracError as error:
        outcome, finding = type(error).__name__, None
    except Exception:  # exactly what the fuzzer looks for
        outcome, finding = "finding", traceback.format_exc(limit=4)
    seconds = time.perf_counter() - started
    if finding is None and seconds > SLOW_SECONDS:
        outcome, finding = "finding", f"took {seconds:.1f} s"
    return outcome, finding, seconds


def seed_files() -> list[bytes]:
    """Small real .drc files covering every colour mode and section kind."""
    import numpy as np
    from PIL import Image

    from diraccodec import api

    def encode(image: Image.Image, level: float, **options: object) -> bytes:
        return api.encode(image, level, device="cpu", **options)  # on a GPU machine too: no CUDA work at collection

    root = Path(__file__).resolve().parent.parent
    with Image.open(root / "samples" / "parrots.png") as sample:
        photo = sample.convert("RGB").crop((120, 40, 216, 120))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(96, dtype=np.uint8), (80, 1))))
    with_icc = photo.copy()
    with_icc.info["icc_profile"] = b"not really a profile but carried verbatim" * 3
    camera = Image.Exif()
    camera[0x010F] = "a camera make"
    with_icc.info.update(exif=camera.tobytes(), xmp=b"<x:xmpmeta>a description</x:xmpmeta>")  # EXIF and XMP too
    return [
        encode(photo, 2),
        encode(photo.crop((0, 0, 40, 32)), 1.5, steps=1),  # the sampler and the detail map's reader
        encode(photo.resize((17, 9)), 7.5, steps=0),
        encode(photo.convert("L"), 4),
        encode(rgba, 3),
        encode(with_icc, 1),
        encode(photo.crop((40, 24, 96, 80)), -0.5),  # format version 4: a level below 0
    ]


def fuzz(inputs: int, seed: int = 0, max_pixels: int = 1_000_000, seconds: float | None = None) -> FuzzReport:
    rng = random.Random(seed)
    seeds = seed_files()
    report = FuzzReport()
    deadline = time.monotonic() + seconds if seconds else None
    while report.inputs < inputs and (deadline is None or time.monotonic() < deadline):
        data = mutate(rng.choice(seeds), rng)
        outcome, finding, took = check(data, max_pixels)
        report.inputs += 1
        report.outcomes[outcome] += 1
        report.slowest = max(report.slowest, took)
        if finding:
            report.findings.append(f"input {data[:64].hex()}...: {finding}")
    return report


def fuzz_in_one_thread(inputs: int, seed: int, seconds: float | None) -> FuzzReport:
    import torch

    torch.set_num_threads(1)
    return fuzz(inputs, seed, seconds=seconds)


def fuzz_in_parallel(inputs: int, seed: int, seconds: float | None, workers: int) -> FuzzReport:
    """`inputs` split over `workers` processes, worker i drawing from seed + i."""
    from concurrent.futures import ProcessPoolExecutor

    shares = [inputs // workers + (index < inputs % workers) for index in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        reports = list(pool.map(fuzz_in_one_thread, shares, [seed + i for i in range(workers)],
                                [seconds] * workers))
    total = FuzzReport()
    for part in reports:
        total.inputs += part.inputs
        total.outcomes.update(part.outcomes)
        total.findings += part.findings
        total.slowest = max(total.slowest, part.slowest)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own seed")
    args = parser.parse_args()
    started = time.monotonic()
    report = fuzz_in_parallel(args.inputs, args.seed, args.seconds, args.workers)
    print(f"inputs: {report.inputs} in {time.monotonic() - started:.0f} s, slowest {report.slowest:.2f} s")
    for outcome, count in report.outcomes.most_common():
        print(f"  {outcome}: {count}")
    print(f"findings: {len(report.findings)}")
    for finding in report.findings[:20]:
        print(finding)
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
