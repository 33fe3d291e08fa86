"""The .drc container: a fixed header, tagged sections and a CRC-32 trailer.

The byte layout is specified in docs/format.md; this module is its only reader and writer.
A section tag whose first byte is an upper-case letter is critical (a decoder that does
not know it must refuse the file); a lower-case first byte marks an optional section
that an older decoder skips. That is the room left for later fields.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

from diraccodec.container import MAGIC
from diraccodec.errors import (
    CorruptFileError,
    LimitExceededError,
    NotADrcFileError,
    TruncatedFileError,
    UnsupportedVersionError,
    coded_size,
    counted,
)
from diraccodec.image import metadata as metadata_parts
from diraccodec.image.metadata import Metadata
from diraccodec.image.planes import ColourMode, format_by_signature
from diraccodec.image.profiles import decompress_profile

FORMAT_VERSION = 3  # what this encoder writes for rate levels 0 and up
# Version 4 is version 3 with the rate level signed (two's complement): written only below level
# 0, so that every file a version-3 decoder can read stays version 3. Version 1 computed the
# entropy parameters in float64 on the CPU; versions 1 and 2 coded the latents of the padding too.
SIGNED_LEVEL_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
LEVEL_DENOMINATOR = 256  # the rate level is stored in 1/256 steps
DEFAULT_MAX_PIXELS = 100_000_000

# magic, version, colour mode, level*256, width, height, weights id, section count
_HEADER = struct.Struct(">4sBBHII8sH")
_SECTION = struct.Struct(">4sI")
_TRAILER = struct.Struct(">I")

TAG_LATENTS = b"LATS"  # range-coded hyper-latents then latents (critical)
TAG_ALPHA = b"ALPH"  # zlib-compressed 8-bit alpha plane (critical: the image has it)
TAG_ICC = b"iccp"  # ICC profile bytes as they are (optional; read, never written: the encoder writes iccz)
TAG_ICC_COMPRESSED = b"iccz"  # zlib-compressed ICC profile (optional)
TAG_STEPS = b"stps"  # recommended diffusion steps, one byte (optional)
TAG_DETAIL = b"detl"  # the detail map for the diffusion decoder's finishing (optional)
TAG_EXIF = b"exfz"  # zlib-compressed EXIF (optional)
TAG_XMP = b"xmpz"  # zlib-compressed XMP packet (optional)
KNOWN_TAGS = {TAG_LATENTS, TAG_ALPHA, TAG_ICC, TAG_ICC_COMPRESSED, TAG_STEPS, TAG_DETAIL, TAG_EXIF, TAG_XMP}


@dataclass
class DrcFile:
    """A .drc file's contents: the header's fields, and its sections by tag (the latents, the
    alpha plane, the metadata...), as `pack` writes them and `unpack` reads them."""

    width: int
    height: int
    colour_mode: ColourMode
    quality: float  # the rate level (encode's `quality`), a multiple of 1/256 (below 0 only in version 4)
    weights_id: bytes  # 8 bytes
    sections: dict[bytes, bytes] = field(default_factory=dict)
    version: int | None = None  # None: the version an encoder writes at the level (version_for: 3, or 4 below 0)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def recommended_steps(self) -> int | None:
        value = self.sections.get(TAG_STEPS)
        return value[0] if value else None

    @property
    def alpha_payload(self) -> bytes | None:
        """The compressed alpha plane, where the colour mode has alpha (its absence is corrupt)."""
        if not self.colour_mode.has_alpha:
            return None
        if TAG_ALPHA not in self.sections:
            raise CorruptFileError("corrupt .drc file (alpha plane missing)")
        return self.sections[TAG_ALPHA]

    @property
    def icc_profile(self) -> bytes | None:
        """The image's ICC profile, where it has one other than sRGB's (diraccodec.image.profiles)."""
        if payload := self.sections.get(TAG_ICC_COMPRESSED):
            return decompress_profile(payload)
        return self.sections.get(TAG_ICC) or None

    @property
    def metadata(self) -> Metadata:
        """The image's EXIF and XMP, where the encoder carried them."""
        def part(tag: bytes, what: str) -> bytes | None:
            payload = self.sections.get(tag)
            return metadata_parts.inflate(payload, metadata_parts.MAX_METADATA_BYTES, what) if payload else None

        return Metadata(part(TAG_EXIF, "EXIF"), part(TAG_XMP, "XMP"))


def quantize_level(level: float) -> int:
    """The level as the header stores it: a count of 1/256 steps."""
    return round(level * LEVEL_DENOMINATOR)


def version_for(level: float) -> int:
    """The version an encoder writes at this level: 3, or 4 where the level is below 0."""
    return SIGNED_LEVEL_VERSION if quantize_level(level) < 0 else FORMAT_VERSION


def pack(drc: DrcFile) -> bytes:
    """The file's bytes: header, sections in their order, and the CRC-32 of all before it.
    Where the file names no version: 3, or 4 for a level below 0 (docs/format.md)."""
    version = version_for(drc.quality) if drc.version is None else drc.version
    level = quantize_level(drc.quality)
    if level < 0 and version < SIGNED_LEVEL_VERSION:
        raise ValueError(f"format version {version} cannot hold the level {drc.quality:g}")
    parts = [
        _HEADER.pack(
            MAGIC,
            version,
            int(drc.colour_mode),
            level % 0x10000,  # two's complement in version 4
            drc.width,
            drc.height,
            drc.weights_id,
            len(drc.sections),
        )
    ]
    for tag, payload in drc.sections.items():
        parts.append(_SECTION.pack(tag, len(payload)))
        parts.append(payload)
    body = b"".join(parts)
    return body + _TRAILER.pack(zlib.crc32(body))


def section_size(payload: bytes) -> int:
    """The bytes a section adds to a file: its tag, its length and its payload."""
    return _SECTION.size + len(payload)


START_BYTES = _HEADER.size  # what check_start reads: the header, or an image format's signature
# The most a file holds beside what its pixels bound: its profile and metadata parts, each at
# most 16 MiB inflated, and other optional sections; and per pixel of the size padded to
# multiples of 64, a latent stream and an alpha plane, with room to spare (the shipped base
# codes random noise at level 8 in 0.31 bytes a pixel; a 4096x1 strip of it with alpha in 6.2
# bytes a pixel, 0.1 a padded one)
ROOM_BESIDE_PIXELS = 5 << 24
BYTES_PER_PIXEL_AT_MOST = 16


def check_start(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> int | None:
    """Refuse data that does not begin as a .drc file, from its first START_BYTES alone, so
    that a reader may check them before it reads the rest of a large file; the most bytes the
    file can hold (largest_file: a reader reads no more), None where `data` is shorter than
    the header."""
    if not data:
        raise NotADrcFileError("not a .drc file (it is empty)")
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        kind = format_by_signature(data[:START_BYTES])
        raise NotADrcFileError(f"not a .drc file ({f'a {kind} image: encode it first' if kind else 'bad magic bytes'})")
    return largest_file(data, max_pixels)


def largest_file(data: bytes, max_pixels: int) -> int | None:
    """The most bytes a .drc file beginning with `data` (its header) can hold: a stream that has
    no end behind a header (a pipe of zeros) is refused there rather than read until memory
    runs out. Its pixels are counted padded to multiples of 64, as versions 1 and 2 coded them
    (a thin strip codes many latents a pixel), and not at all where the size is one the
    decoder refuses (LimitExceededError, or a zero side): such a file is refused, not read.
    None without the whole header."""
    if len(data) < _HEADER.size:
        return None
    width, height = _HEADER.unpack_from(data)[4:6]
    try:
        LimitExceededError.check(width, height, max_pixels)
        padded = math.prod(coded_size(width, height))
    except LimitExceededError:
        padded = 0
    return _HEADER.size + _TRAILER.size + ROOM_BESIDE_PIXELS + BYTES_PER_PIXEL_AT_MOST * padded


def unpack(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DrcFile:
    """Parse and validate; every failure is a DiracError naming what is wrong."""
    longest = check_start(data, max_pixels)
    if len(data) < _HEADER.size + _TRAILER.size:
        raise TruncatedFileError("truncated .drc file (header incomplete)")
    _, version, mode, level, width, height, weights_id, count = _HEADER.unpack_from(data)
    if version >= SIGNED_LEVEL_VERSION and level >= 0x8000:
        level -= 0x10000
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise UnsupportedVersionError(
            f"unsupported .drc format version {version} (this decoder reads versions {readable})"
        )
    if longest is not None and len(data) > longest:  # a reader stops one byte past it
        LimitExceededError.check(width, height, max_pixels)  # the likelier reason, where it holds
        raise CorruptFileError(f"corrupt .drc file (over {counted(longest, 'byte')}, more than any file of a "
                               f"{width}x{height} image holds)")
    body, (checksum,) = data[: -_TRAILER.size], _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    sections: dict[bytes, bytes] = {}
    position = _HEADER.size
    for _ in range(count):
        if position + _SECTION.size > len(body):
            raise _truncated_or_corrupt(body, checksum, "section header past the end of the file")
        tag, length = _SECTION.unpack_from(body, position)
        position += _SECTION.size
        if length > len(body) - position:
            raise _truncated_or_corrupt(body, checksum, "section longer than the file")
        if tag in sections:
            raise CorruptFileError(f"corrupt .drc file (section {tag!r} repeated)")
        sections[tag] = body[position : position + length]
        position += length
    if position != len(body):
        end = position + _TRAILER.size  # where the file ends if its own checksum follows its last section
        if zlib.crc32(body[:position]) == _TRAILER.unpack_from(data, position)[0]:
            raise CorruptFileError(f"corrupt .drc file ({counted(len(data) - end, 'byte')} after its end: "
                                   f"bytes appended, or files joined)")
        raise _truncated_or_corrupt(body, checksum, "unexpected bytes after the last section")
    if zlib.crc32(body) != checksum:
        raise CorruptFileError("corrupt .drc file (checksum mismatch)")
    try:
        colour_mode = ColourMode(mode)
    except ValueError:
        raise CorruptFileError(f"corrupt .drc file (unknown colour mode {mode})") from None
    for tag in sections:
        if tag not in KNOWN_TAGS and tag[:1].isupper():
            raise UnsupportedVersionError(f"file needs a newer decoder (unknown critical section {tag!r})")
    if TAG_LATENTS not in sections:
        raise CorruptFileError("corrupt .drc file (no latent section)")
    if width == 0 or height == 0:
        raise CorruptFileError("corrupt .drc file (zero image size)")
    LimitExceededError.check(width, height, max_pixels)
    return DrcFile(
        width=width,
        height=height,
        colour_mode=colour_mode,
        quality=level / LEVEL_DENOMINATOR,
        weights_id=weights_id,
        sections=sections,
        version=version,
    )


def _truncated_or_corrupt(body: bytes, checksum: int, what: str) -> Exception:
    """A structural error in a file whose checksum fails is most likely a cut-off file."""
    if zlib.crc32(body) != checksum:
        return TruncatedFileError(f"truncated or corrupt .drc file ({what})")
    return CorruptFileError(f"corrupt .drc file ({what})")
