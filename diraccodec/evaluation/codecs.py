"""The codecs an evaluation compares: diraccodec at its levels and Pillow's encoders.

Each is a name, a list of settings from lowest to highest rate, and a round trip that
returns the real encoded size and the decoded image, so every bpp is a file size.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class CodecUnderTest:
    name: str
    settings: Sequence[float]
    round_trip: Callable[[Image.Image, float], tuple[bytes, Image.Image]]
    setting_name: str = "quality"


def diraccodec_codec(levels: Sequence[float], weights: str | None = None) -> CodecUnderTest:
    from diraccodec import api

    def round_trip(image: Image.Image, level: float) -> tuple[bytes, Image.Image]:
        data = api.encode(image, level, weights=weights)
        return data, api.decode(data, weights=weights)

    return CodecUnderTest("diraccodec", tuple(levels), round_trip, "level")


def pillow_codec(name: str, image_format: str, settings: Sequence[float], **options: object) -> CodecUnderTest:
    def round_trip(image: Image.Image, quality: float) -> tuple[bytes, Image.Image]:
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, quality=int(quality), **options)
        data = buffer.getvalue()
        with Image.open(io.BytesIO(data)) as decoded:
            return data, decoded.convert("RGB")

    return CodecUnderTest(name, tuple(settings), round_trip)


def reference_codecs() -> list[CodecUnderTest]:
    """JPEG (4:2:0, optimised Huffman), WebP, AVIF and JPEG XL as people ship them."""
    import pillow_jxl  # noqa: F401 - registers the JXL plugin with Pillow

    return [
        pillow_codec("JPEG", "JPEG", (5, 10, 20, 30, 45, 60, 75, 85, 92), optimize=True),
        pillow_codec("WebP", "WEBP", (5, 15, 30, 45, 60, 75, 85, 95), method=6),
        pillow_codec("AVIF", "AVIF", (10, 20, 35, 50, 60, 70, 80, 90), speed=6),
        pillow_codec("JPEG XL", "JXL", (10, 25, 40, 55, 70, 80, 88, 95), effort=7),
    ]
