"""The codecs an evaluation compares: diraccodec at its levels and Pillow's encoders.

Each is a name, a list of settings from lowest to highest rate, and a round trip that
returns the real encoded size and every decoding of that one file (diraccodec decodes
the same file at several step counts), so every bpp is a file size.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import PIL
from PIL import Image

from diraccodec import api
from diraccodec.errors import DiracError
from diraccodec.options import AUTO, DEFAULT_EFFORT


@dataclass(frozen=True)
class Decoding:
    image: Image.Image
    seconds: float  # encode plus this decode
    steps: int | None = None  # diffusion steps; None for codecs without them
    # the part of `seconds` that every decoding of the file shares (encode, base synthesis),
    # so that the rest is this decoding's own stage (restoration or diffusion steps)
    shared_seconds: float = 0.0
    encode_seconds: float = 0.0  # the encode alone: the encoder's search makes it most of the time


@dataclass(frozen=True)
class CodecUnderTest:
    name: str
    settings: Sequence[float]
    round_trip: Callable[[Image.Image, float], tuple[bytes, list[Decoding]]]
    setting_name: str = "quality"


def diraccodec_codec(
    levels: Sequence[float], steps: Sequence[int] = (0,), seed: int = 0, weights: str | None = None,
    effort: int = DEFAULT_EFFORT, device: str = AUTO, exact: bool = False,
) -> CodecUnderTest:
    """Our codec; each file is decoded once to the base synthesis, which is then restored (0
    steps) or enhanced by the diffusion decoder (as `api.decode` does, and inside its
    `model_calls`, so that the pixels are decode's whatever the caller's autocast or dtype)."""
    compute = api.compute_for(device, exact)

    def round_trip(image: Image.Image, level: float) -> tuple[bytes, list[Decoding]]:
        with api.model_calls():
            return timed_round_trip(image, level)

    def timed_round_trip(image: Image.Image, level: float) -> tuple[bytes, list[Decoding]]:
        started = time.perf_counter()
        data = api.encode(image, level, weights=weights, effort=effort, device=device)
        encode_seconds = time.perf_counter() - started
        synthesis = np.asarray(api.decode(data, steps=0, weights=weights, restore=False, device=device, exact=exact))
        base_seconds = time.perf_counter() - started
        codec = api.get_codec(weights, compute)
        info = api.inspect(data)
        quality = info.header.quality
        diffusion = api.get_diffusion(codec) if any(count > 0 for count in steps) else None
        decodings = []
        for count in steps:
            started = time.perf_counter()
            decoded = api.restore_or_enhance(codec, synthesis, quality, count, seed, diffusion, info.detail_map)
            decodings.append(Decoding(Image.fromarray(decoded), base_seconds + time.perf_counter() - started, count,
                                      base_seconds, encode_seconds))
        return data, decodings

    name = "diraccodec" if effort == DEFAULT_EFFORT else f"diraccodec effort {effort}"
    return CodecUnderTest(name, tuple(levels), round_trip, "level")


def pillow_codec(name: str, image_format: str, settings: Sequence[float], **options: object) -> CodecUnderTest:
    def round_trip(image: Image.Image, quality: float) -> tuple[bytes, list[Decoding]]:
        started = time.perf_counter()
        data = encode_with_pillow(image, image_format, int(quality), **options)
        encode_seconds = time.perf_counter() - started
        rgb = decode_with_pillow(data)
        return data, [Decoding(rgb, time.perf_counter() - started, encode_seconds=encode_seconds)]

    return CodecUnderTest(name, tuple(settings), round_trip)


def encode_with_pillow(image: Image.Image, image_format: str, quality: int, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, quality=quality, **options)
    return buffer.getvalue()


def decode_with_pillow(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as decoded:
        return decoded.convert("RGB")


REFERENCE_KEYS = ("jpeg", "webp", "avif", "jxl")
AVIF_OPTIONS = {"speed": 6}
# Each reference's qualities, lowest rate first: from a blurry image to near transparency.
REFERENCE_SETTINGS: dict[str, tuple[float, ...]] = {
    "jpeg": (5, 10, 20, 30, 45, 60, 75, 85, 92),
    "webp": (5, 15, 30, 45, 60, 75, 85, 95),
    "avif": (10, 20, 35, 50, 60, 70, 80, 90),
    "jxl": (10, 25, 40, 55, 70, 80, 88, 95),
}


def register_jpeg_xl() -> None:
    """Pillow reads and writes JPEG XL through pillow-jxl-plugin (the eval extra)."""
    try:
        import pillow_jxl  # noqa: F401 - registers the JXL plugin with Pillow
    except ImportError:
        raise DiracError("the JPEG XL reference needs pillow-jxl-plugin: pip install 'diraccodec[eval]'") from None


REFERENCE_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "jxl": "JXL"}  # Pillow's names


def check_references(keys: Sequence[str]) -> None:
    """Make ready, before any work, the reference codecs that `keys` name: JPEG XL's plugin is
    registered, and a format this Pillow cannot write (AVIF before Pillow 11.3, WebP or AVIF
    built without their library) is one error, not a failure after the first timings."""
    if "jxl" in keys:
        register_jpeg_xl()
    Image.init()  # every plugin Pillow has: the formats it can write are then listed
    for key in keys:
        if (image_format := REFERENCE_FORMATS[key]) not in Image.SAVE:
            since = " from 11.3" if key == "avif" else ""
            raise DiracError(f"the {key} reference needs a Pillow that writes {image_format}, which Pillow "
                             f"{PIL.__version__} here does not (Pillow's own wheels write it{since})")


def reference_codecs(keys: Sequence[str] = REFERENCE_KEYS,
                     settings: Mapping[str, Sequence[float]] | None = None) -> list[CodecUnderTest]:
    """JPEG (4:2:0, optimised Huffman), WebP, AVIF and JPEG XL as people ship them, at
    REFERENCE_SETTINGS or at the qualities `settings` gives a key."""
    check_references(keys)
    qualities = {**REFERENCE_SETTINGS, **(settings or {})}
    builders = {
        "jpeg": lambda values: pillow_codec("JPEG", "JPEG", values, optimize=True),
        "webp": lambda values: pillow_codec("WebP", "WEBP", values, method=6),
        "avif": lambda values: pillow_codec("AVIF", "AVIF", values, **AVIF_OPTIONS),
        "jxl": lambda values: pillow_codec("JPEG XL", "JXL", values, effort=7),
    }
    return [builders[key](qualities[key]) for key in keys]
