"""From any image Pillow opens to the codec's planes, and back.

The codec itself sees 8-bit RGB. Greyscale is sent as RGB and turned back into one
channel on decode; alpha travels losslessly beside the latents; the ICC profile, EXIF and
XMP are carried through (diraccodec.image.metadata); EXIF orientation is applied on encode
so that the pixels are upright.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from diraccodec.errors import (
    CorruptFileError,
    ImageReadError,
    InvalidOptionError,
    LimitExceededError,
    counted,
    image_named,
    warn,
)
from diraccodec.image import DRC_FORMAT
from diraccodec.image.metadata import (
    PILLOW_SETTINGS,
    Metadata,
    attach,
    held,
    info_bytes,
    pillow_reads_whole_metadata,
    read_metadata,
    tiff_exif,
)
from diraccodec.image.profiles import MAX_PROFILE_BYTES, colour_space

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_PREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}
ORIENTATION_TAG = 0x0112
# How files of the formats users meet begin: a file that begins so but that Pillow cannot
# open is a damaged one of that format, not one of a format Pillow does not know
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF"}


# What Pillow's parsers raise on a damaged file (a TIFF's broken directory gives a TypeError)
PILLOW_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, struct.error)


class ColourMode(IntEnum):
    RGB = 0
    L = 1
    RGBA = 2
    LA = 3

    @property
    def has_alpha(self) -> bool:
        return self in (ColourMode.RGBA, ColourMode.LA)


@dataclass
class Planes:
    rgb: np.ndarray  # (height, width, 3) uint8
    colour_mode: ColourMode
    alpha: np.ndarray | None = None  # (height, width) uint8
    icc_profile: bytes | None = None
    metadata: Metadata = field(default_factory=Metadata)


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in `folder` (with `recursive`, in its subfolders too), known by their
    suffix, in name order: the order every command that takes a folder works in."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    # os.path.isfile never raises (Path.is_file does, in a folder this user may list but not search)
    return sorted(path for path in entries if path.suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(path))


def _is_empty(source: str | Path | bytes) -> bool:
    """Whether the input has no bytes at all (a failed download, a truncated copy); a device
    or a pipe, whose size reads as 0 (/dev/zero), is not called so."""
    if isinstance(source, bytes):
        return len(source) == 0
    try:
        status = Path(source).stat()
    except OSError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_size == 0


def open_image(source: str | Path | bytes, max_pixels: int, label: str | None = None) -> Image.Image:
    """Open, check the size and apply EXIF orientation; ImageReadError on any failure.

    The size is checked from the header, before any pixel is decoded. An animated image
    gives its first frame, with a warning.
    """
    label = label or ("input data" if isinstance(source, bytes) else str(source))
    try:
        with _pillow_limit(max_pixels):  # Pillow checks it again as it counts frames and loads (TIFF, GIF)
            opened = _opened(source, max_pixels, label)
            try:
                if opened.format == DRC_FORMAT:  # nothing decoded yet: the plugin decodes on load
                    raise InvalidOptionError(f"{label} is a .drc file already: decode it (dirac decode); "
                                             f"encoding it again loses quality twice")
                frames, image_format = getattr(opened, "n_frames", 1), opened.format
                image = _load(opened)
            except BaseException:
                opened.close()  # its file, which a caller of this function never sees
                raise
        if frames > 1:
            warn(_one_of_several(label, image_format, frames, None))
        _warn_of_own_gamma(image, label)
        if frames > 1:  # Pillow keeps the file of several frames open, to seek: the frame read goes alone
            image = _detached(image)
            opened.close()
        return upright(image)
    except (LimitExceededError, ImageReadError, InvalidOptionError):
        raise
    except Image.DecompressionBombError:  # Pillow's own guard, at twice our limit
        raise LimitExceededError(f"image {label} exceeds the limit of {counted(max_pixels, 'pixel')} "
                                 f"more than twice over") from None
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image: no such file {label}") from None
    except (IsADirectoryError, PermissionError) as error:
        # Windows says "permission denied" of a folder; os.path.isdir never raises
        if isinstance(error, IsADirectoryError) or (not isinstance(source, bytes) and os.path.isdir(source)):
            raise ImageReadError(f"cannot read image: {label} is a folder") from None
        raise ImageReadError(f"cannot read image {label}: {error}") from None
    except UnidentifiedImageError:
        if _is_empty(source):
            raise ImageReadError(f"cannot read image: {label} is empty") from None
        if kind := format_by_signature(source):
            raise ImageReadError(f"cannot read image: {label} is a damaged or truncated {kind} file") from None
        raise ImageReadError(f"cannot read image: {label} is not an image format Pillow knows") from None
    except PILLOW_READ_ERRORS as error:
        raise ImageReadError(f"cannot read image {label}: {error}") from None


def loaded(image: Image.Image, max_pixels: int, label: str | None = None) -> Image.Image:
    """A caller's PIL image (already within `max_pixels`) with its pixels read, as open_image
    reads a file's: Pillow's errors (a closed image, a damaged file opened lazily) as
    ImageReadError, and an animated image warns that one frame, its current one, is encoded."""
    try:
        with _pillow_limit(max_pixels):
            try:
                frames = getattr(image, "n_frames", 1)
            except (OSError, ValueError, EOFError):  # its file closed after its frame was read
                frames = 1
            image_format, current = image.format, image.tell() + 1
            image = _load(image)
    # and a file closed before its pixels were read, where Pillow asserts that it is open (or,
    # before 12.1, reads from no file at all)
    except (*PILLOW_READ_ERRORS, AssertionError, AttributeError) as error:
        closed = isinstance(error, AttributeError) or not str(error)
        reason = "its file was closed before its pixels were read" if closed else str(error)
        raise ImageReadError(f"cannot read {image_named(label) if label else 'the image'}: {reason}") from None
    if frames > 1:
        warn(_one_of_several(label or "the image", image_format, frames, current))
    _warn_of_own_gamma(image, label or "the image")
    return image


SRGB_LIKE_GAMMA = 1 / 2.2  # a PNG gAMA that viewers take for sRGB (browsers treat 0.45455 so)


def _warn_of_own_gamma(image: Image.Image, label: str) -> None:
    """Say that a PNG's own gamma (gAMA, where no sRGB or ICC chunk overrides it) is not
    carried: a .drc file holds an ICC profile or nothing, so viewers show the decoded image as
    sRGB, lighter or darker than the original. Its pixels are coded as they are."""
    gamma = image.info.get("gamma")
    if image.format == "PNG" and "srgb" not in image.info and not image.info.get("icc_profile") and \
            isinstance(gamma, float) and gamma > 0 and abs(gamma - SRGB_LIKE_GAMMA) >= 0.005:  # 0: invalid, ignored
        warn(f"{label} states its own gamma (PNG gAMA {gamma:g}), which the file does not carry: "
             f"viewers show it as sRGB (convert it to sRGB first to keep its look)")


def _load(image: Image.Image) -> Image.Image:
    """The image with its pixels read (under the caller's _pillow_limit); a 16-bit grey PNG
    with alpha, which Pillow loads as RGBA, as LA, with its info (profile, EXIF, XMP); a 2- or
    4-bit grey PNG's transparent level in 8 bits, as Pillow gives its samples, and a 16-bit
    RGB PNG's transparent colour as the high bytes that Pillow gives of its samples."""
    grey_with_alpha, depth_scale = _is_grey_png_with_alpha(image), _low_depth_grey_png_scale(image)
    sixteen_bit_rgb = image.format == "PNG" and "RGB;16B" in _raw_modes(image)
    image.load()
    if grey_with_alpha:
        return image.convert("LA")
    if depth_scale > 1 and isinstance(image.info.get("transparency"), int):
        image = image.copy()  # the caller's keeps its info
        image.info["transparency"] *= depth_scale
    if sixteen_bit_rgb and isinstance(image.info.get("transparency"), tuple):
        image = image.copy()
        image.info["transparency"] = tuple(value >> 8 for value in image.info["transparency"])
    return image


def _raw_modes(image: Image.Image) -> list[str]:
    """How an opened, not yet loaded, image's file stores its pixels (Pillow's raw modes),
    which its mode may not say: Pillow loads some depths and layouts as others."""
    return [tile[3] for tile in image.tile if len(tile) > 3]


def _one_of_several(label: str, image_format: str | None, frames: int, current: int | None) -> str:
    """The warning for an image of several frames, of which one is encoded (`current`, counted
    from 1; None: the first): a TIFF's frames are pages."""
    part = "page" if image_format == "TIFF" else "frame"
    has = f"has {frames} pages" if part == "page" else f"is animated ({frames} frames)"
    return f"{label} {has}: encoding {f'the first {part}' if current is None else f'{part} {current}'} only"


def format_by_signature(source: str | Path | bytes) -> str | None:
    """The format whose signature the file begins with (None for none known, or unreadable);
    WebP's RIFF header names its format at bytes 8-11, BMP's "BM" is followed by its size and
    two reserved words of 0."""
    try:
        if isinstance(source, bytes):
            start = source[:16]
        elif not stat.S_ISREG(os.stat(source).st_mode):  # a pipe read once already cannot be read again
            return None
        else:
            with open(source, "rb") as file:
                start = file.read(16)
    except OSError:
        return None
    if start[:4] == b"RIFF" and start[8:12] == b"WEBP" and features.check_module("webp"):
        return "WebP"
    if start[:2] == b"BM" and start[6:10] == bytes(4):  # its two reserved words are 0: text beginning "BM" is not
        return "BMP"
    return next((kind for signature, kind in _SIGNATURES.items() if start.startswith(signature)), None)


def _is_grey_png_with_alpha(image: Image.Image) -> bool:
    """Whether an opened, not yet loaded, image is a 16-bit grey PNG with alpha, which Pillow
    loads as RGBA (its raw mode says what the file holds): the codec keeps it grey."""
    return image.format == "PNG" and image.mode == "RGBA" and "LA;16B" in _raw_modes(image)


_LOW_DEPTH_GREY_SCALES = {"L;2": 85, "L;4": 17}  # a PNG's raw mode -> what Pillow multiplies its samples by


def _low_depth_grey_png_scale(image: Image.Image) -> int:
    """What Pillow multiplies an opened, not yet loaded, 2- or 4-bit grey PNG's samples by
    (85, 17) to make them 8-bit, where it leaves the tRNS level in the file's depth; else 1.
    An image its caller has loaded keeps no tile to tell by: its level stays as Pillow gives it."""
    if image.format != "PNG":
        return 1
    return next((_LOW_DEPTH_GREY_SCALES[mode] for mode in _raw_modes(image) if mode in _LOW_DEPTH_GREY_SCALES), 1)


def _with_exif_in_info(image: Image.Image) -> Image.Image:
    """Of a TIFF, whose EXIF Pillow reads from the file, a copy with that EXIF in its info,
    where other formats keep theirs (and a copy, unlike a TIFF, keeps it); else the image."""
    if image.format == "TIFF" and "exif" not in image.info and (exif := tiff_exif(image)):
        image = image.copy()  # the caller's keeps its info
        image.info["exif"] = exif
    return image


def _detached(image: Image.Image) -> Image.Image:
    """A copy of a loaded frame that needs its file no more (its EXIF too)."""
    kept = _with_exif_in_info(image)
    return kept if kept is not image else image.copy()


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (itself where it needs no turn), the
    orientation taken out of its EXIF: a .drc file holds upright pixels."""
    try:
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # an EXIF block Pillow cannot parse: nothing to turn by
        return image
    if orientation == 1:
        return image
    # the EXIF where turning takes the orientation out of it, and the turned copy keeps it
    return ImageOps.exif_transpose(_with_exif_in_info(image))


@contextlib.contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's own size guard moved to `max_pixels` (its error comes at twice that, its warning
    at once: silenced), and its PNG reader's text limit to the metadata's; its complaint of
    corrupt EXIF silenced, said by the metadata's reading. Its limits and the
    warning filters are process-wide: they are changed under the lock that the package's own
    calls take, so other threads' warnings may be lost meanwhile (warnings.catch_warnings is
    process-wide before Python 3.14)."""
    with PILLOW_SETTINGS, warnings.catch_warnings(), pillow_reads_whole_metadata():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow's own complaints of EXIF as it reads a JPEG's resolution from it (its TIFF
        # reader's): the metadata's reading says what becomes of that EXIF, once (read_metadata)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        previous_limit = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = max_pixels
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit


def _opened(source: str | Path | bytes, max_pixels: int, label: str) -> Image.Image:
    """The image opened (its header read, under `_pillow_limit`, whose limit it keeps), refused
    over `max_pixels` with its size named: Pillow's own guard, off while the header is read,
    would refuse it at twice the limit without its size."""
    Image.MAX_IMAGE_PIXELS = None  # opening reads the header alone: the check below names the size
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    finally:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        LimitExceededError.check(image.width, image.height, max_pixels, label)
    except LimitExceededError:
        image.close()
        raise
    return image


DARK_PEAK = 16  # of 255: a scaled image whose brightest sample is below this is almost black


def _to_8bit_grey(image: Image.Image, label: str = "the image") -> Image.Image:
    if image.mode in ("1", "L"):
        return image.convert("L")
    array = np.asarray(image).astype(np.float64)
    finite = array[np.isfinite(array)]
    peak = float(finite.max()) if finite.size else 0.0
    array = np.nan_to_num(array, nan=0.0, posinf=peak, neginf=0.0)  # an infinity is as bright as the rest
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        array = array / 257.0  # 16-bit samples
    elif image.mode == "F" and peak <= 1.0:
        array = array * 255.0  # floats in [0, 1]
    grey = np.clip(np.round(array), 0, 255).astype(np.uint8)
    if 0 < grey.max() < DARK_PEAK:  # the scale guessed from the mode and peak may be the wrong one
        scale = "0-1 or 0-255" if image.mode == "F" else "0-65535"
        warn(f"{label} has {image.mode} samples (peak {peak:g}) that come out almost black in 8 bits "
             f"(peak {grey.max()} of 255): if that is not the picture, scale them to {scale} first")
    return Image.fromarray(grey)  # "L" from 8-bit samples in two dimensions


# The colour space an ICC profile must describe (its header's bytes 16-19) to describe a mode's pixels
_PROFILE_SPACES = {ColourMode.RGB: b"RGB ", ColourMode.RGBA: b"RGB ", ColourMode.L: b"GRAY", ColourMode.LA: b"GRAY"}


def image_to_planes(image: Image.Image, with_metadata: bool = True, label: str = "the image") -> Planes:
    """The image's pixels and profile, and its EXIF and XMP unless `with_metadata` is False.

    The profile is kept where it describes the planes' colours: one of another colour space
    (CMYK, Lab ...) no longer does once the pixels are converted to RGB or grey."""
    planes = _planes(image, with_metadata, label)
    planes.icc_profile = held(planes.icc_profile, MAX_PROFILE_BYTES, "ICC profile", " (its colours are read as sRGB)")
    space = colour_space(planes.icc_profile)  # bytes that are no profile are kept as they came
    if space is not None and space != _PROFILE_SPACES[planes.colour_mode]:
        planes.icc_profile = None
    return planes


def _planes(image: Image.Image, with_metadata: bool, label: str = "the image") -> Planes:
    icc = info_bytes("icc_profile", image.info.get("icc_profile") or None)
    metadata = read_metadata(image) if with_metadata else Metadata()
    if image.mode in _PREMULTIPLIED:  # alpha-premultiplied: the planes hold straight colours
        image = image.convert(_PREMULTIPLIED[image.mode])
    mode = image.mode
    if mode == "P":  # transparency in its info (tRNS), or an alpha in its palette (Image.quantize's of RGBA)
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        mode = image.mode
    if mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    if "transparency" in image.info and (mode in _GREY_MODES or mode == "RGB"):  # a colour marked transparent
        return _with_transparent_colour(image, icc, metadata, label)
    if mode in _GREY_MODES:
        grey = np.asarray(_to_8bit_grey(image, label))
        return Planes(np.repeat(grey[:, :, None], 3, axis=2), ColourMode.L, None, icc, metadata)
    if mode == "LA":
        grey, alpha = (np.asarray(band) for band in image.split())
        return Planes(np.repeat(grey[:, :, None], 3, axis=2), ColourMode.LA, alpha.copy(), icc, metadata)
    if mode == "RGBA":
        array = np.asarray(image)
        return Planes(array[:, :, :3].copy(), ColourMode.RGBA, array[:, :, 3].copy(), icc, metadata)
    if mode != "RGB":
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...
        icc = None if mode == "CMYK" else icc  # a CMYK profile, readable or not, no longer describes them
    return Planes(np.asarray(image).copy(), ColourMode.RGB, None, icc, metadata)


def _with_transparent_colour(image: Image.Image, icc: bytes | None, metadata: Metadata, label: str) -> Planes:
    """An image whose `transparency` names one colour (grey level or RGB triple): that colour
    becomes alpha 0, every other pixel alpha 255. Where the colour is nowhere (or is not one a
    pixel can have), the image goes without alpha, as it is."""
    colour, transparent = image.info["transparency"], None
    if image.mode == "RGB" and isinstance(colour, tuple) and len(colour) >= 3 and \
            all(isinstance(value, int) and 0 <= value <= 0xFFFF for value in colour[:3]):
        values = np.asarray(image)
        # a 16-bit PNG's colour, over pixels Pillow gives as their high bytes (every pixel of that
        # high byte goes). A file opened here has it in high bytes already (_load); of an image a
        # caller loaded, one whose channels are all under 256 cannot be told from an 8-bit one
        if max(colour[:3]) > 255:
            colour = tuple(value >> 8 for value in colour)
        transparent = (values == np.asarray(colour[:3], dtype=values.dtype)).all(axis=2)
    elif image.mode != "RGB" and isinstance(colour, int):  # a grey level, in the image's own depth
        values = np.asarray(image.convert("L") if image.mode == "1" else image)  # mode 1's white is 255
        transparent = values == colour
    if transparent is None or not transparent.any():
        plain = image.copy()
        plain.info.pop("transparency")
        planes = _planes(plain, with_metadata=False, label=label)
        planes.icc_profile, planes.metadata = icc, metadata
        return planes
    alpha = np.where(transparent, 0, 255).astype(np.uint8)
    if image.mode == "RGB":
        return Planes(values.copy(), ColourMode.RGBA, alpha, icc, metadata)
    grey = np.asarray(_to_8bit_grey(image, label))
    return Planes(np.repeat(grey[:, :, None], 3, axis=2), ColourMode.LA, alpha, icc, metadata)


def planes_to_image(planes: Planes) -> Image.Image:
    # Pillow takes the mode from 8-bit arrays' shapes ("L", "RGB"); naming it was deprecated in 11.3
    rgb = planes.rgb.astype(np.uint8, copy=False)
    if planes.colour_mode in (ColourMode.L, ColourMode.LA):
        image = Image.fromarray(np.clip(np.round(rgb.astype(np.float32).mean(axis=2)), 0, 255).astype(np.uint8))
    else:
        image = Image.fromarray(rgb)
    if planes.colour_mode.has_alpha:
        if planes.alpha is None:
            raise CorruptFileError("corrupt .drc file (alpha plane missing)")
        image.putalpha(Image.fromarray(planes.alpha.astype(np.uint8, copy=False)))
    if planes.icc_profile:
        image.info["icc_profile"] = planes.icc_profile
    attach(image, planes.metadata)
    return image


def compress_alpha(alpha: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(alpha, dtype=np.uint8).tobytes(), 9)


def decompress_alpha(payload: bytes, width: int, height: int) -> np.ndarray:
    """Inflate at most width*height bytes: a hostile payload cannot make it allocate more."""
    expected = width * height
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(payload, expected)
    except zlib.error:
        raise CorruptFileError("corrupt .drc file (alpha plane does not inflate)") from None
    if len(raw) != expected or inflater.unconsumed_tail:
        raise CorruptFileError("corrupt .drc file (alpha plane has the wrong size)")
    if not inflater.eof:  # all its bytes, but no end or Adler-32: as a metadata part, one whole stream
        raise CorruptFileError("corrupt .drc file (alpha plane's stream is cut off)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width).copy()
