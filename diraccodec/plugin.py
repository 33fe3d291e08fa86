"""The Pillow plugin: after `import diraccodec`, Pillow opens and saves .drc files like any format.

    import diraccodec
    from PIL import Image

    Image.open("photo.png").save("photo.drc", quality=3)  # any of diraccodec.encode's keywords
    with Image.open("photo.drc") as image:                # size, mode and info from the header alone
        image.decoding = {"steps": 20, "seed": 1}        # this image's decode options, before it loads
        pixels = image.convert("RGB")                     # the decoder runs here, on the first load

Options, the way the AVIF and JPEG XL plugins take theirs:

- Saving takes diraccodec.encode's keywords as save parameters (quality, size, bpp, steps, effort,
  detail_map, device, weights, max_pixels, progress, metadata); the image's info["exif"] and
  info["xmp"] are carried unless metadata=False, and its info["icc_profile"]. Like Pillow's own
  writers, `exif=`, `xmp=` and `icc_profile=` given to save replace the image's (empty: none);
  exif may be an Image.Exif. Without quality, size or bpp the level is DEFAULT_QUALITY. Other
  parameters are ignored, as every Pillow plugin ignores what is not its own, so that
  `save(path, **other.info)` works.
- Image.open has no place for options, so those plugins read theirs from module globals. Here
  decoding takes diraccodec.decode's keywords (steps, seed, device, exact, restore, weights,
  diffusion_weights, max_pixels, progress) from process-wide defaults, set with set_decode_options(), and
  per image from the dict `image.decoding`, set between open and load, which wins over them.
  These are this plugin's own, so an unknown name raises InvalidOptionError; max_pixels also
  bounds the header that Image.open reads.

Errors are the package's typed ones (diraccodec.errors): Image.open swallows only a plugin's
SyntaxError, IndexError, TypeError and struct.error while it tries formats, and _accept lets only
data that starts with the .drc magic reach _open, so a corrupt or truncated file raises
CorruptFileError or TruncatedFileError from Image.open, and decoding errors come from load().
Those that a Pillow user meets for a file (corrupt, of a newer format, of other weights) are
also OSErrors, as Pillow's own readers raise.
"""

from __future__ import annotations

import inspect
import io
from functools import partial
from typing import IO, Any

from PIL import Image, ImageFile

from diraccodec.container import MAGIC
from diraccodec.errors import InvalidOptionError
from diraccodec.image import DRC_FORMAT
from diraccodec.image.metadata import attach
from diraccodec.options import DEFAULT_QUALITY

FORMAT = DRC_FORMAT  # the name encode refuses to read as an input (image.planes)
EXTENSION = ".drc"
MIME = "image/x-drc"
_RATE_OPTIONS = ("quality", "size", "bpp")
_INFO_OPTIONS = ("icc_profile", "exif", "xmp")  # save parameters over the image's info, as Pillow's writers take them

_decode_defaults: dict[str, Any] = {}


def encode_options() -> frozenset[str]:
    """The keywords the plugin passes on to encode: all but the input, from the API's signature.
    The API (and torch with it) is imported on the plugin's first use, not when Pillow learns of it."""
    from diraccodec import api

    return frozenset(inspect.signature(api.encode).parameters) - {"image", "label"}


def decode_options() -> frozenset[str]:
    """The keywords the plugin passes on to decode: all but the data."""
    from diraccodec import api

    return frozenset(inspect.signature(api.decode).parameters) - {"data"}


def _checked_decode_options(options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise InvalidOptionError(f"decode options must be a dict of diraccodec.decode's keywords, got {options!r}")
    unknown = sorted(set(options) - decode_options())
    if unknown:
        raise InvalidOptionError(f"unknown decode option(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(decode_options()))}")
    from diraccodec import api

    # where they are set, not at a later load (max_pixels: at Image.open)
    as_checked = api.check_decode_options(**options)
    checked = dict(options)
    if "max_pixels" in checked:  # read by Image.open's own header check: a Python int (NumPy's overflows there)
        checked["max_pixels"] = as_checked.max_pixels
    return checked


def set_decode_options(**options: Any) -> dict[str, Any]:
    """Replace the process-wide decode defaults (none: the API's) and return the previous ones,
    so that `set_decode_options(**previous)` restores them: Image.open cannot take options."""
    global _decode_defaults
    previous, _decode_defaults = _decode_defaults, _checked_decode_options(options)
    return previous


def _accept(prefix: bytes) -> bool:
    """Only real .drc data reaches _open, so its errors are about a .drc file, never a probe."""
    return prefix.startswith(MAGIC)


class DrcImageFile(ImageFile.ImageFile):
    """A .drc file: the header is read on open, the latents are decoded on the first load."""

    format = FORMAT
    format_description = "diraccodec learned image"
    _data: bytes | None = None  # the file, until it is decoded (an unpickled copy holds pixels, not this)

    def _open(self) -> None:
        from diraccodec.container import drc  # with NumPy: on the first .drc file, not at `import diraccodec`
        from diraccodec.image.files import read_checked

        assert self.fp is not None
        self.decoding: dict[str, Any] = {}
        max_pixels = _decode_defaults.get("max_pixels", drc.DEFAULT_MAX_PIXELS)
        # no more than a file of its header's size can hold (Pillow has read a file object it cannot seek whole)
        self._data: bytes | None = read_checked(self.fp, partial(drc.check_start, max_pixels=max_pixels),
                                                drc.START_BYTES)
        header = drc.unpack(self._data, max_pixels)  # checks the whole file, decodes nothing (and loads no torch)
        _ = header.alpha_payload  # where the mode has alpha, its plane is there (its contents: on load)
        self._size = (header.width, header.height)
        self._mode = header.colour_mode.name  # RGB, L, RGBA, LA: Pillow's names
        self.info["level"] = header.quality  # not "quality": other writers read that from save(**info)
        self.info["weights_id"] = header.weights_id.hex()
        if header.recommended_steps is not None:
            self.info["recommended_steps"] = header.recommended_steps
        if icc := header.icc_profile:
            self.info["icc_profile"] = icc
        attach(self, header.metadata)  # info["exif"] and info["xmp"], as Pillow's JPEG reader gives them
        self.tile = []

    def load(self) -> Image.core.PixelAccess | None:
        if self._data is not None:  # not yet decoded
            from diraccodec import api

            options = {**_decode_defaults, **_checked_decode_options(self.decoding)}
            decoded = api.decode(self._data, **options)
            # hand the pixels to Pillow's raw decoder, as the AVIF, JPEG XL and WebP plugins do
            if self.fp and self._exclusive_fp:
                self.fp.close()
            self.fp = io.BytesIO(decoded.tobytes())
            self.tile = [("raw", (0, 0, *self.size), 0, decoded.mode)]  # a plain tuple: older Pillows lack _Tile
            self._data = None  # kept until now so that a load with bad options can be retried
        return super().load()

    def close(self) -> None:
        self._data = None  # a load after close fails at once, as Pillow's own images do, not after a decode
        super().close()

    def load_seek(self, pos: int) -> None:
        """Defined so that Pillow reads the decoded pixels, never memory-maps the .drc file as raw."""


def _save(image: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from diraccodec import api

    known = encode_options()
    options = {name: value for name, value in image.encoderinfo.items() if name in known}
    if not any(options.get(name) is not None for name in _RATE_OPTIONS):
        # an opened .drc image's info gives its level as `level`: save(**info) keeps it
        options["quality"] = image.encoderinfo.get("level", DEFAULT_QUALITY)
    label = f"the image saved as {filename}" if isinstance(filename, str) and filename else None  # in warnings
    fp.write(api.encode(_with_given_info(image), **options, label=label))


def _with_given_info(image: Image.Image) -> Image.Image:
    """The image, or a copy whose info holds the ICC profile, EXIF and XMP given to save."""
    given = {name: image.encoderinfo[name] for name in _INFO_OPTIONS if name in image.encoderinfo}
    if not given:
        return image
    image = image.copy()  # the caller's image keeps its own info
    for name, value in given.items():
        if isinstance(value, Image.Exif):
            value = value.tobytes()
        if value:  # XMP as text is read as read_metadata reads it from any image's info
            image.info[name] = value
        else:
            image.info.pop(name, None)
    return image


def register() -> None:
    """Tell Pillow about .drc files (run by `import diraccodec`; running it again changes nothing)."""
    Image.register_open(FORMAT, DrcImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)
