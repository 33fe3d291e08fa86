"""EXIF and XMP: what a file says about its image beside the pixels, and their stored form.

Camera, date, place and rights travel with the image, as avifenc and cjxl carry them, unless
the encoder is told to strip them. Two parts change on the way, because the pixels do:
- the orientation: the encoder turns the pixels upright and takes the tag out of both EXIF
  and XMP (ImageOps.exif_transpose), so that no viewer turns them a second time;
- the EXIF thumbnail (its second IFD) is left out: it shows the original's pixels, not the
  decoded ones, and it weighs as much as a low-rate file (5.5 KB on average in the training
  photos' EXIF, scripts/metadata_sizes.py; a Kodak-sized photo at 0.15 bpp takes 7.4 KB).
EXIF is kept as a TIFF header and its IFDs, the form PNG's eXIf chunk holds. Both parts
are stored zlib-compressed and inflated to at most MAX_METADATA_BYTES.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import PIL
from PIL import ExifTags, Image, PngImagePlugin

from diraccodec.errors import CorruptFileError, InvalidOptionError, warn

MAX_METADATA_BYTES = 1 << 24  # inflating a stored part stops here: a hostile file cannot ask for more
EXIF_PREFIX = b"Exif\x00\x00"  # JPEG's APP1 marker starts its EXIF with it; PNG and WebP hold none
XMP_TIFF_TAG = 700  # where TIFF keeps its XMP packet
# Pillow's size limits and Python's warning filters are process-wide: the calls that change them
# (here and in diraccodec.image.planes) take turns, so that each restores what it found.
PILLOW_SETTINGS = threading.RLock()
PILLOW_FOLDER = Path(PIL.__file__).resolve().parent  # where Pillow's warnings come from


@contextlib.contextmanager
def pillow_reads_whole_metadata() -> Iterator[None]:
    """Pillow's PNG reader refuses a profile or text chunk that inflates past 1 MiB (its
    MAX_TEXT_CHUNK), so a PNG written with a larger profile or XMP would not open again: the
    limit is raised to MAX_METADATA_BYTES while one is read (process-wide: under PILLOW_SETTINGS)."""
    with PILLOW_SETTINGS:
        previous = PngImagePlugin.MAX_TEXT_CHUNK
        PngImagePlugin.MAX_TEXT_CHUNK = max(previous, MAX_METADATA_BYTES)
        try:
            yield
        finally:
            PngImagePlugin.MAX_TEXT_CHUNK = previous


# The most of each part one JPEG marker holds (65,533 bytes, less the XMP's namespace name);
# JPEG has no way to split EXIF or XMP over markers, as it splits an ICC profile.
JPEG_MARKER_ROOM = {"exif": 65533, "xmp": 65533 - 29}


@dataclass(frozen=True)
class Metadata:
    exif: bytes | None = None  # a TIFF header and its IFDs, without the "Exif\0\0" prefix
    xmp: bytes | None = None  # the XMP packet, XML


# A TIFF's first IFD is mostly its own layout (size, strips, compression); these of its tags
# say what EXIF says of a photo, and its EXIF and GPS IFDs are EXIF's own.
TIFF_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, 0x0112, 0x0131, 0x0132, 0x013B, 0x013C, 0x8298)
# ImageDescription, Make, Model, Orientation, Software, DateTime, Artist, HostComputer, Copyright
TIFF_EXIF_IFDS = (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo)


def info_bytes(name: str, part: object) -> bytes | None:
    """A part of an image's info (profile, EXIF, XMP) as bytes, None where it is empty or absent.
    Pillow's readers give bytes: anything else is a caller's own, refused by name."""
    if part is not None and not isinstance(part, bytes | bytearray):
        raise InvalidOptionError(f"the image's info[{name!r}] must be bytes, got {type(part).__name__}")
    return bytes(part) if part else None


def read_metadata(image: Image.Image) -> Metadata:
    """The EXIF and XMP that Pillow read from the image's file (of a TIFF, its descriptive
    tags: tiff_exif). Of EXIF that Pillow cannot parse, what it reads is kept, with a warning,
    rather than bytes carried unchecked."""
    xmp = image.info.get("xmp") or None
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    exif = image.info.get("exif") or (tiff_exif(image) if image.format == "TIFF" else None)
    if isinstance(exif, Image.Exif):  # as Pillow's writers take it
        exif = exif.tobytes()
    return Metadata(held(_rewritten_exif(info_bytes("exif", exif)), MAX_METADATA_BYTES, "EXIF"),
                    held(info_bytes("xmp", xmp), MAX_METADATA_BYTES, "XMP"))


def held(part: bytes | None, limit: int, name: str, left_out: str = "") -> bytes | None:
    """`part`, or None with a warning where it is longer than a decoder inflates (`limit`): a
    file carrying it would be refused as corrupt by every decoder, this one too."""
    if part is not None and len(part) > limit:
        warn(f"{name} left out: {len(part):,} bytes, more than a .drc file holds ({limit >> 20} MiB){left_out}")
        return None
    return part


def tiff_exif(image: Image.Image) -> bytes | None:
    """A TIFF's EXIF, as the other formats hold it: its descriptive tags and its EXIF and GPS
    IFDs, without its layout tags (None where it has none). Pillow keeps no info["exif"] for a
    TIFF, so the encoder puts this there before the orientation is applied (planes.open_image)."""
    try:
        tags = image.getexif()
        kept = Image.Exif()
        for tag in TIFF_DESCRIPTIVE_TAGS:
            if tag in tags:
                kept[tag] = tags[tag]
        for pointer in TIFF_EXIF_IFDS:
            if ifd := tags.get_ifd(pointer):
                kept[pointer] = dict(ifd)
        return kept.tobytes() if len(kept) else None
    except Exception as error:  # Pillow raises many kinds on malformed IFDs: the pixels still count
        warn(f"EXIF left out: it cannot be read ({error})")
        return None


def _rewritten_exif(raw: bytes | None) -> bytes | None:
    """Pillow's writing of `raw`: its IFDs without the thumbnail; None where nothing is left."""
    if not raw:
        return None
    exif = Image.Exif()
    with PILLOW_SETTINGS, warnings.catch_warnings(record=True) as complaints:  # Pillow warns of entries it skips
        warnings.simplefilter("always")
        try:
            exif.load(raw)
            written = exif.tobytes()
        except Exception as error:  # and raises many kinds on other malformed EXIF
            complaints.append(warnings.WarningMessage(str(error), UserWarning, "", 0))
            exif = Image.Exif()
    # Pillow's own: catch_warnings records every thread's warnings meanwhile (before Python 3.14)
    pillows = [c for c in complaints if not c.filename or Path(c.filename).resolve().is_relative_to(PILLOW_FOLDER)]
    complaint = str(pillows[0].message).strip() if pillows else ""
    if not len(exif):
        if complaint:
            warn(f"EXIF left out: it cannot be read ({complaint})")
        return None
    if complaint:
        warn(f"EXIF carried in part: some of it cannot be read ({complaint})")
    return written.removeprefix(EXIF_PREFIX)


def describe(metadata: Metadata) -> str:
    """What a file carries, in a few words, for people."""
    parts = [f"{name} ({len(part):,} bytes)" for name, part in (("EXIF", metadata.exif), ("XMP", metadata.xmp)) if part]
    return ", ".join(parts) or "none"


def compress(part: bytes) -> bytes:
    return zlib.compress(part, 9)


def inflate(payload: bytes, limit: int, what: str) -> bytes:
    """Inflate a stored section, at most `limit` bytes; a payload that is not one whole,
    non-empty zlib stream makes the file corrupt."""
    inflater = zlib.decompressobj()
    try:
        part = inflater.decompress(payload, limit)
    except zlib.error:
        raise CorruptFileError(f"corrupt .drc file ({what})") from None
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data or not part:
        raise CorruptFileError(f"corrupt .drc file ({what})")
    return part


def attach(image: Image.Image, metadata: Metadata) -> None:
    """Put `metadata` in `image.info` as Pillow's own readers do (EXIF with JPEG's prefix)."""
    if metadata.exif:
        image.info["exif"] = EXIF_PREFIX + metadata.exif
    if metadata.xmp:
        image.info["xmp"] = metadata.xmp


def save_options(image: Image.Image, image_format: str) -> dict[str, object]:
    """Pillow's save parameters that write `image.info`'s EXIF and XMP in `image_format`
    (BMP holds neither)."""
    exif, xmp = image.info.get("exif"), image.info.get("xmp")
    if image_format == "JPEG":
        return _fitting_jpeg({key: value for key, value in (("exif", exif), ("xmp", xmp)) if value})
    if image_format == "WEBP":
        return {key: value for key, value in (("exif", exif), ("xmp", xmp)) if value}
    if image_format == "PNG":
        options: dict[str, object] = {"exif": exif} if exif else {}
        if xmp:
            from PIL.PngImagePlugin import PngInfo

            text = PngInfo()
            text.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"), zip=True)
            options["pnginfo"] = text
        return options
    if image_format == "TIFF" and (exif or xmp):
        tags = Image.Exif()  # TIFF writes EXIF as its own tags: one set, with the XMP among them
        if exif:
            try:
                tags.load(exif)
            except (SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, OSError):
                warn("EXIF left out of the TIFF output: it does not parse as EXIF")
        if xmp:
            tags[XMP_TIFF_TAG] = xmp
        return {"exif": tags}
    return {}


def _fitting_jpeg(parts: dict[str, bytes]) -> dict[str, bytes]:
    """The parts that fit a JPEG marker; each one that does not is left out with a warning,
    and the other is written all the same."""
    fitting = {}
    for key, value in parts.items():
        if len(value) <= JPEG_MARKER_ROOM[key]:
            fitting[key] = value
        else:
            warn(f"{key.upper()} of {len(value)} bytes left out of the JPEG output: a JPEG marker "
                 f"holds at most {JPEG_MARKER_ROOM[key]}")
    return fitting
