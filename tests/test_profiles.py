"""Colour: which ICC profiles a file keeps, their compressed form, conversions to sRGB, gamma."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

import diraccodec
from diraccodec.errors import CorruptFileError
from diraccodec.image.files import image_bytes
from diraccodec.image.profiles import MAX_PROFILE_BYTES, compress_profile, decompress_profile, describes_srgb
from tests.conftest import display_profile, grey_profile, srgb_profile, swapped_primaries_profile, xyz_tag


def test_only_a_profile_that_shows_as_srgb_is_left_out():
    assert describes_srgb(srgb_profile())
    assert not describes_srgb(swapped_primaries_profile())
    assert not describes_srgb(ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes())  # not RGB
    assert not describes_srgb(b"not a profile" * 40)  # unreadable: kept, as it came


def test_a_stored_profile_inflates_to_its_bytes_and_no_further():
    profile = swapped_primaries_profile()
    assert decompress_profile(compress_profile(profile)) == profile
    with pytest.raises(CorruptFileError, match="ICC profile"):
        decompress_profile(zlib.compress(bytes(MAX_PROFILE_BYTES + 1)))  # a bomb stops at the cap
    with pytest.raises(CorruptFileError, match="ICC profile"):
        decompress_profile(compress_profile(profile) + b"trailing")


def test_an_output_format_without_profiles_warns_that_the_profile_is_left_out():
    image = Image.new("RGB", (8, 8), (200, 30, 60))
    image.info["icc_profile"] = swapped_primaries_profile()
    for image_format in ("PNG", "TIFF", "WEBP", "JPEG"):  # each keeps it
        assert Image.open(io.BytesIO(image_bytes(image, image_format))).info["icc_profile"] == \
            image.info["icc_profile"]
    with pytest.warns(UserWarning, match=r"^the colour profile \([\d,]+ bytes\) is left out of the BMP output"):
        assert "icc_profile" not in Image.open(io.BytesIO(image_bytes(image, "BMP"))).info


def test_a_grey_image_with_a_grey_profile_is_shown_the_same_in_webp_which_holds_rgb_only():
    """WebP holds grey as RGB: the grey profile cannot go with it, so its greys go to sRGB."""
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (4, 1)))
    exif = Image.Exif()
    exif[0x010F] = "Cam"  # the make
    ramp.info |= {"icc_profile": grey_profile(1.0), "exif": exif.tobytes(), "xmp": b"<x:xmpmeta/>"}
    linear = np.arange(0, 256, 4) / 255
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255
    for image in (ramp, Image.merge("LA", (ramp, ramp.point(lambda value: 255 - value)))):
        image.info = ramp.info
        with Image.open(io.BytesIO(image_bytes(image, "WEBP"))) as written:
            assert written.mode == ("RGB" if image.mode == "L" else "RGBA") and "icc_profile" not in written.info
            assert written.getexif()[0x010F] == "Cam" and written.info["xmp"] == b"<x:xmpmeta/>"  # kept
            pixels = np.asarray(written).astype(int)
            assert np.abs(pixels[0, :, :3] - srgb[:, None]).max() <= 0.5  # a linear grey shown in sRGB, rounded
            assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
            if image.mode == "LA":
                assert (pixels[..., 3] == np.asarray(image.getchannel("A"))).all()
        for image_format in ("PNG", "TIFF", "JPEG"):  # grey formats keep both
            if image.mode == "L" or image_format != "JPEG":
                with Image.open(io.BytesIO(image_bytes(image, image_format))) as written:
                    assert written.mode == image.mode and written.info["icc_profile"] == grey_profile(1.0)
    unreadable = ramp.copy()
    unreadable.info["icc_profile"] = grey_profile(1.0)[:140]  # a grey profile's header, its tags cut off
    with pytest.warns(UserWarning, match=r"^the grey colour profile is left out of the WEBP output"):
        data = image_bytes(unreadable, "WEBP")
    with Image.open(io.BytesIO(data)) as written:
        assert "icc_profile" not in written.info
        assert (np.asarray(written)[..., 0] == np.asarray(ramp)).all()  # the greys as they were


def png_with_chunks(image: Image.Image, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """The image as PNG with these chunks added after its header (Pillow writes no gAMA)."""
    plain = io.BytesIO()
    image.save(plain, "PNG")
    data = plain.getvalue()
    added = b"".join(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
                     for kind, body in chunks)
    return data[:33] + added + data[33:]  # the signature (8) and IHDR (25) first


def test_a_pngs_own_gamma_which_no_file_carries_is_named_in_a_warning():
    """A .drc file holds an ICC profile or nothing: a PNG's gAMA (without an sRGB or ICC chunk
    to override it) is lost, and viewers show the decoded image as sRGB."""
    import warnings

    ramp = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))).convert("RGB")
    linear = png_with_chunks(ramp, [(b"gAMA", struct.pack(">I", 100_000))])  # samples proportional to light
    expected = (r"^input data states its own gamma \(PNG gAMA 1\), which the file does not carry: viewers show it "
                r"as sRGB \(convert it to sRGB first to keep its look\)$")
    with pytest.warns(UserWarning, match=expected):
        data = diraccodec.encode(linear, 3, effort=1)
    with pytest.warns(UserWarning, match=r"^the image states its own gamma"):  # an image object, as opened
        assert diraccodec.encode(Image.open(io.BytesIO(linear)), 3, effort=1) == data
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for kept in ([(b"gAMA", struct.pack(">I", 45_455))],  # what viewers take for sRGB
                 [(b"gAMA", struct.pack(">I", 100_000)), (b"sRGB", b"\x00")],  # an sRGB chunk overrides gAMA
                 [(b"gAMA", struct.pack(">I", 100_000)), (b"iCCP", b"sRGB\x00\x00" + zlib.compress(icc))]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            diraccodec.encode(png_with_chunks(ramp, kept), 3, effort=1)


def rgb_profile(name: str, colorants: tuple[tuple[float, float, float], ...], curve: bytes) -> bytes:
    """A matrix/TRC profile of RGB (a display's or a working space's kind): red, green and blue
    colorants and one curve for all three."""
    return display_profile(b"RGB ", name, [*((signature, xyz_tag(colorant)) for signature, colorant in zip(
        (b"rXYZ", b"gXYZ", b"bXYZ"), colorants, strict=True)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])


def gamma_curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


SRGB_COLORANTS = ((0.43607, 0.22249, 0.01392), (0.38515, 0.71687, 0.09708), (0.14307, 0.06061, 0.71410))  # D50


def levels_off_srgb(profile: bytes) -> int:
    """The most that the probe's colours in this profile differ from themselves shown in sRGB."""
    from diraccodec.image.profiles import _probe

    transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"),
                                        "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    shown = np.asarray(ImageCms.applyTransform(_probe(), transform), dtype=np.int16)
    return int(np.abs(shown - np.asarray(_probe(), dtype=np.int16)).max())


def test_adobe_rgb_and_a_gamma_22_display_profile_are_kept():
    """A profile a few levels off sRGB, like one far off, changes how the image shows: dropping it shifts colours."""
    adobe = rgb_profile("Adobe RGB (1998)", ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087),
                                             (0.14919, 0.06322, 0.74457)), gamma_curve(563 / 256))
    display = rgb_profile("sRGB primaries, gamma 2.2", SRGB_COLORANTS, gamma_curve(2.2))
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(adobe))).strip() == "Adobe RGB (1998)"
    assert levels_off_srgb(adobe) > 100 and 2 <= levels_off_srgb(display) < 20
    assert not describes_srgb(adobe)
    assert not describes_srgb(display)


def test_an_srgb_profile_one_level_off_littlecms_s_counts_as_srgb():
    """HP's sRGB profile (rounded colorants, a 1,024-entry curve) is one level off littleCMS's: it need not be kept."""
    steps = np.arange(1024) / 1023
    linear = np.where(steps <= 0.04045, steps / 12.92, ((steps + 0.055) / 1.055) ** 2.4)
    curve = b"curv" + bytes(4) + struct.pack(">I", 1024) + np.round(linear * 65535).astype(">u2").tobytes()
    hp = rgb_profile("sRGB IEC61966-2.1", SRGB_COLORANTS, curve)
    assert levels_off_srgb(hp) == 1  # exactly the tolerance
    assert describes_srgb(hp)


def test_bytes_without_an_icc_signature_have_no_colour_space():
    """Only a profile's header names a colour space: other bytes with "GRAY" at 16 must not read as a grey profile."""
    from diraccodec.image.profiles import colour_space, is_grey_profile

    assert colour_space(grey_profile(1.0)) == b"GRAY" and is_grey_profile(grey_profile(1.0))
    assert colour_space(srgb_profile()) == b"RGB "
    not_icc = bytearray(grey_profile(1.0))
    not_icc[36:40] = b"xxxx"
    for data in (bytes(not_icc), bytes(200), b"GRAY" * 40, None, b""):
        assert colour_space(data) is None
    assert not is_grey_profile(bytes(not_icc))


def test_a_stored_profile_inflates_to_16_mib_and_no_further():
    """16 MiB is the format's cap on a profile: a larger one is a bomb, refused before it fills memory."""
    limit = 16 * 1024 * 1024
    assert decompress_profile(zlib.compress(bytes(limit))) == bytes(limit)
    with pytest.raises(CorruptFileError, match="ICC profile"):
        decompress_profile(zlib.compress(bytes(limit + 1)))
