"""ICC profiles: which ones a file needs to keep, and their compressed form.

A profile can outweigh a small image's latents: the common sRGB profiles take 3-9 KB, a
0.17-megapixel photo at level 1 about 3 KB. An image without a profile is read as sRGB by
every viewer, so a profile that says no more than that is not kept: one whose colours match
littleCMS's sRGB within one level of eight bits on a probe of 6,856 colours (a 18x18x18
lattice, the grey ramp and each primary's ramp, relative colorimetric). The sRGB profiles
found among the training photos (HP's, Canon's, Nikon's) match within 0 or 1; Adobe RGB,
camera and display profiles differ by 58-135 levels, and are kept, zlib-compressed.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

from diraccodec.image.metadata import compress, inflate

SRGB_TOLERANCE = 1  # levels of 8 bits: well below what lossy coding moves
NO_OPTIMISATION = 0x0100  # littleCMS's cmsFLAGS_NOOPTIMIZE (ImageCms.Flags names it from Pillow 10.3)
MAX_PROFILE_BYTES = 1 << 24  # inflating a stored profile stops here: a hostile file cannot ask for more


@functools.cache
def _probe() -> Image.Image:
    """The colours the sRGB check converts: a lattice and the ramps where curves differ first."""
    steps = np.arange(0, 256, 15, dtype=np.uint8)
    lattice = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    ramp = np.arange(256, dtype=np.uint8)
    black = np.zeros_like(ramp)
    ramps = [np.stack([ramp, ramp, ramp], axis=1)] + [
        np.stack([ramp if channel == primary else black for channel in range(3)], axis=1) for primary in range(3)
    ]
    return Image.fromarray(np.concatenate([lattice, *ramps])[None])  # 8-bit, three channels: "RGB"


def describes_srgb(profile: bytes) -> bool:
    """Whether an RGB image in this profile shows as sRGB within SRGB_TOLERANCE: then the
    file need not keep it. A profile littleCMS cannot read, or not of RGB, is kept."""
    try:
        from PIL import ImageCms
    except ImportError:  # a Pillow built without littleCMS: keep every profile
        return False
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if source.profile.xcolor_space.strip() != "RGB":
            return False
        transform = ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), "RGB", "RGB",
                                            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        shown = ImageCms.applyTransform(_probe(), transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return False
    difference = np.abs(np.asarray(shown, dtype=np.int16) - np.asarray(_probe(), dtype=np.int16))
    return int(difference.max()) <= SRGB_TOLERANCE


def describe(profile: bytes | None) -> str:
    """A profile in a few words, for people: its own description, or what its absence means."""
    if not profile:
        return "sRGB (no profile stored)"
    try:
        from PIL import ImageCms
    except ImportError:
        return f"{len(profile):,} bytes"
    try:
        name = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile))).strip() or "unnamed"
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        name = "unreadable"
    return f"{name} ({len(profile):,} bytes)"


def grey_shown_in_srgb(image: Image.Image) -> Image.Image | None:
    """A grey image (L or LA) whose profile is a grey one, converted through it to sRGB (RGB
    or RGBA, relative colorimetric, no profile): for a format that holds RGB only (WebP), where
    a grey profile cannot describe the pixels. None where this Pillow cannot convert through it
    (littleCMS cannot read it, or Pillow was built without littleCMS)."""
    try:
        from PIL import ImageCms
    except ImportError:
        return None
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8)[None])  # 8-bit, two dimensions: "L"
    # each grey level's colour, then a look-up; unoptimised: littleCMS's 8-bit tables were 9 levels off in the shadows
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        shown = ImageCms.profileToProfile(ramp, source, ImageCms.createProfile("sRGB"),
                                          ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB",
                                          flags=NO_OPTIMISATION)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    if shown is None:  # profileToProfile gives None only where asked to work in place
        return None
    grey = image.getchannel(0) if image.mode == "LA" else image
    rgb = Image.merge("RGB", [grey.point(np.asarray(band)[0].tolist()) for band in shown.split()])
    if image.mode == "LA":
        rgb.putalpha(image.getchannel("A"))
    rgb.info = {key: value for key, value in image.info.items() if key != "icc_profile"}
    return rgb


def colour_space(profile: bytes | None) -> bytes | None:
    """The colour space an ICC profile describes (its header's bytes 16-19: b"RGB ", b"GRAY",
    b"CMYK" ...); None where the bytes do not say "acsp" at 36-39, as a profile's do."""
    return profile[16:20] if profile and profile[36:40] == b"acsp" else None


def is_grey_profile(profile: bytes | None) -> bool:
    """Whether the bytes are an ICC profile of grey colours."""
    return colour_space(profile) == b"GRAY"


def compress_profile(profile: bytes) -> bytes:
    return compress(profile)


def decompress_profile(payload: bytes) -> bytes:
    return inflate(payload, MAX_PROFILE_BYTES, "ICC profile")
