"""ICC profiles: which ones a file keeps, and their compressed form."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import ImageCms

from diraccodec.errors import CorruptFileError
from diraccodec.image.profiles import MAX_PROFILE_BYTES, compress_profile, decompress_profile, describes_srgb
from tests.conftest import srgb_profile, swapped_primaries_profile


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
    from PIL import Image

    from diraccodec.image.files import image_bytes

    image = Image.new("RGB", (8, 8), (200, 30, 60))
    image.info["icc_profile"] = swapped_primaries_profile()
    for image_format in ("PNG", "TIFF", "WEBP", "JPEG"):  # each keeps it
        assert Image.open(io.BytesIO(image_bytes(image, image_format))).info["icc_profile"] == \
            image.info["icc_profile"]
    with pytest.warns(UserWarning, match=r"^the colour profile \([\d,]+ bytes\) is left out of the BMP output"):
        assert "icc_profile" not in Image.open(io.BytesIO(image_bytes(image, "BMP"))).info
