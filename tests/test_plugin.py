"""The Pillow plugin: Image.open and Image.save on .drc files give what the API gives, on real images."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diraccodec
from diraccodec import api, plugin
from diraccodec.container import drc
from diraccodec.errors import CorruptFileError, InvalidOptionError, LimitExceededError, TruncatedFileError
from tests.conftest import MAKE, SAMPLE, XMP, camera_jpeg, parsed, saved_as, swapped_primaries_profile


def with_alpha(image: Image.Image) -> Image.Image:
    """The image with a real, varying alpha plane (a gradient), which the codec keeps losslessly."""
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(image.size))
    return rgba


def saved(image: Image.Image, **options: object) -> bytes:
    """What Image.save writes for .drc, through a file object."""
    return saved_as(image, "DRC", **options)


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture
def small_drc(small_image: Image.Image) -> bytes:
    return diraccodec.encode(small_image, quality=3)


@pytest.fixture
def restored_defaults() -> Iterator[None]:
    """Process-wide decode defaults are global state: each test that sets them puts them back."""
    previous = plugin.set_decode_options()
    yield
    plugin.set_decode_options(**previous)


def test_open_reads_size_mode_and_info_from_the_header_without_decoding(small_image, tmp_path, monkeypatch):
    path = tmp_path / "small.drc"
    path.write_bytes(diraccodec.encode(with_alpha(small_image), quality=3.5, steps=4))

    def no_decoding(*args: object, **kwargs: object) -> Image.Image:
        raise AssertionError("decoded before load()")

    monkeypatch.setattr(api, "decode", no_decoding)
    with Image.open(path) as image:
        assert (image.format, image.size, image.mode) == ("DRC", small_image.size, "RGBA")
        assert image.get_format_mimetype() == plugin.MIME
        assert image.info["level"] == 3.5 and image.info["recommended_steps"] == 4
        assert image.info["weights_id"] == api.get_codec().weights.weights_id.hex()
        with pytest.raises(AssertionError, match="before load"):
            image.load()  # the decoder runs here, and only here


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
def test_save_then_open_gives_the_api_bytes_and_pixels(small_image, tmp_path: Path, mode: str):
    image = with_alpha(small_image).convert(mode) if "A" in mode else small_image.convert(mode)
    path = tmp_path / "small.drc"
    image.save(path, quality=3)
    data = path.read_bytes()
    assert data == diraccodec.encode(image, quality=3)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
        assert reopened.tobytes() == diraccodec.decode(data).tobytes()


def test_the_icc_profile_travels(small_image):
    profile = swapped_primaries_profile()
    image = small_image.copy()
    image.info["icc_profile"] = profile
    with opened(saved(image)) as reopened:
        assert reopened.info["icc_profile"] == profile  # from the header, before any decoding
        reopened.load()
        assert reopened.info["icc_profile"] == profile


def test_icc_profile_exif_and_xmp_given_to_save_replace_the_images(small_image):
    with Image.open(io.BytesIO(camera_jpeg(small_image, orientation=1))) as photo:
        image = photo.convert("RGB")
        image.info.update(photo.info, icc_profile=swapped_primaries_profile())
    assert parsed(image.info["exif"])[MAKE] == "Cam" and image.info["xmp"] == XMP
    other_exif = Image.Exif()
    other_exif[MAKE] = "Other"
    given = {"icc_profile": b"", "exif": other_exif, "xmp": "<x:xmpmeta>given</x:xmpmeta>"}
    with opened(saved(image, **given)) as reopened:
        assert "icc_profile" not in reopened.info
        assert parsed(reopened.info["exif"])[MAKE] == "Other"
        assert reopened.info["xmp"] == b"<x:xmpmeta>given</x:xmpmeta>"
    assert image.info["xmp"] == XMP  # the caller's image is left as it was
    with opened(saved(image, exif=None, xmp=b"")) as reopened:
        assert "exif" not in reopened.info and "xmp" not in reopened.info
        assert reopened.info["icc_profile"] == image.info["icc_profile"]


def test_file_objects_and_the_default_quality(small_image, small_drc: bytes):
    data = saved(small_image)  # no quality, size or bpp: the default level
    assert data == small_drc and plugin.DEFAULT_QUALITY == 3
    source = io.BytesIO(data)
    with Image.open(source) as image:
        image.load()
        assert image.tobytes() == diraccodec.decode(data).tobytes()
    assert not source.closed  # the caller's file stays the caller's


@pytest.mark.slow
def test_save_options_pass_through(small_image, small_drc: bytes):
    assert len(saved(small_image, quality=2)) < len(small_drc) < len(saved(small_image, quality=5))
    target = len(small_drc) - 40
    sized = saved(small_image, size=target)
    assert len(sized) <= target and 2 < api.inspect(sized).header.quality < 3
    assert api.inspect(saved(small_image, steps=7)).recommended_steps == 7
    assert drc.TAG_DETAIL in api.inspect(saved(small_image, quality=5, detail_map=True)).header.sections


def test_steps_change_the_pixels_per_image_and_by_default(small_drc: bytes, restored_defaults):
    plain = diraccodec.decode(small_drc).tobytes()
    diffused = diraccodec.decode(small_drc, steps=1, seed=5).tobytes()
    assert diffused != plain
    with opened(small_drc) as image:
        image.decoding = {"steps": 1, "seed": 5}
        assert image.tobytes() == diffused
    plugin.set_decode_options(steps=1, seed=5)
    with opened(small_drc) as image:
        assert image.tobytes() == diffused
    with opened(small_drc) as image:
        image.decoding = {"steps": 0}  # an image's own options win over the defaults
        assert image.tobytes() == plain


def test_bad_options_raise_invalid_option_error(small_image, small_drc: bytes, tmp_path: Path, restored_defaults):
    with pytest.raises(InvalidOptionError, match="quality"):
        small_image.save(tmp_path / "bad.drc", quality=85)
    assert not (tmp_path / "bad.drc").exists()
    with pytest.raises(LimitExceededError, match=rf"^the image saved as {tmp_path / 'big.drc'} of "
                       rf"{small_image.width}x{small_image.height} exceeds the limit of 10 pixels"):
        small_image.save(tmp_path / "big.drc", max_pixels=10)  # named as the message's subject, not "image the..."
    with pytest.raises(InvalidOptionError, match="stepz"):
        plugin.set_decode_options(stepz=1)
    for bad, message in (({"steps": "x"}, "steps must be a whole number"), ({"seed": 1.5}, "seed must be"),
                         ({"device": "tpu"}, "device"), ({"restore": "no"}, "restore must be True or False"),
                         ({"progress": 1}, "progress must be a function")):
        plugin.set_decode_options(steps=2)
        with pytest.raises(InvalidOptionError, match=message):  # where it is set, not at every later load
            plugin.set_decode_options(**bad)
        assert plugin.set_decode_options() == {"steps": 2}  # the defaults stayed as they were
    with opened(small_drc) as image:
        image.decoding = {"steps": 1000}
        with pytest.raises(InvalidOptionError, match="steps"):
            image.load()
        image.decoding = {}  # the file is kept, so a corrected load works
        assert image.tobytes() == diraccodec.decode(small_drc).tobytes()


def test_damaged_files_raise_the_typed_errors(small_image, small_drc: bytes):
    flipped = small_drc[:40] + bytes([small_drc[40] ^ 1]) + small_drc[41:]
    with pytest.raises(CorruptFileError, match=r"^corrupt \.drc file \(checksum mismatch\)$") as raised:
        opened(flipped)
    assert type(raised.value) is CorruptFileError  # not a TruncatedFileError, its subclass
    with pytest.raises(TruncatedFileError):
        opened(small_drc[: len(small_drc) // 2])
    with pytest.raises(TruncatedFileError):
        opened(small_drc[:20])
    # intact container, but the RGBA file's alpha plane is gone: refused by Image.open, as
    # inspect refuses it; one whose plane does not inflate, on load, as decode refuses it
    header = drc.unpack(diraccodec.encode(with_alpha(small_image), quality=3))
    alpha = header.sections.pop(drc.TAG_ALPHA)
    with pytest.raises(CorruptFileError, match=r"^corrupt \.drc file \(alpha plane missing\)$"):
        opened(drc.pack(header))
    header.sections[drc.TAG_ALPHA] = alpha[: len(alpha) // 2]
    with opened(drc.pack(header)) as image:
        assert image.mode == "RGBA"
        with pytest.raises(CorruptFileError, match="alpha plane"):
            image.load()


def test_other_formats_still_open_and_save(small_image):
    with Image.open(SAMPLE) as png:
        assert png.format == "PNG" and png.size == (384, 256)
        png.load()
    with Image.open(io.BytesIO(saved_as(small_image))) as again:
        assert np.array_equal(np.asarray(again), np.asarray(small_image))
    assert Image.registered_extensions()[".drc"] == "DRC"


def test_an_opened_image_pickles_copies_and_closes_as_pillow_s_own_do(small_drc: bytes, monkeypatch):
    import copy
    import pickle

    from diraccodec.errors import UnsupportedVersionError

    for duplicate in (lambda image: pickle.loads(pickle.dumps(image)), copy.deepcopy):
        with Image.open(io.BytesIO(small_drc)) as image:
            twin = duplicate(image)
            assert np.array_equal(np.asarray(twin.convert("RGB")), np.asarray(image.convert("RGB")))
    image = Image.open(io.BytesIO(small_drc))
    assert set(image.info) >= {"level", "weights_id"} and "quality" not in image.info  # save(**info) elsewhere works
    again = io.BytesIO()
    image.save(again, "DRC", **image.info)  # re-encoded at its own level
    assert api.inspect(again.getvalue()).header.quality == image.info["level"] == 3
    image.close()
    decodes = []
    monkeypatch.setattr(api, "decode", lambda *arguments, **options: decodes.append(1))
    with pytest.raises(ValueError, match="closed image"):  # at once, without a decode first
        image.load()
    assert decodes == []
    monkeypatch.undo()
    newer = bytearray(small_drc)
    newer[4] = 99  # a format version from the future
    with pytest.raises(OSError) as raised:  # what Pillow users catch for a file they cannot read
        Image.open(io.BytesIO(bytes(newer)))
    assert isinstance(raised.value, UnsupportedVersionError)
    with pytest.raises(InvalidOptionError, match="max_pixels must be a whole number"):
        plugin.set_decode_options(max_pixels=None)


def counted_decodes(monkeypatch) -> list[int]:
    """Wrap the real api.decode so that a test can count how often the plugin runs it."""
    calls: list[int] = []
    real = api.decode

    def counting(*arguments: object, **options: object) -> Image.Image:
        calls.append(1)
        return real(*arguments, **options)

    monkeypatch.setattr(api, "decode", counting)
    return calls


def test_an_opened_image_is_decoded_once_however_often_its_pixels_are_read(small_drc: bytes, monkeypatch):
    """Decoding is the costly part: tobytes, convert and getpixel after the first load reuse its pixels."""
    decodes = counted_decodes(monkeypatch)
    with opened(small_drc) as image:
        image.load()
        assert decodes == [1]
        pixels = image.tobytes()
        image.convert("L")
        image.getpixel((0, 0))
        image.load()
        assert decodes == [1]
        assert pixels == diraccodec.decode(small_drc).tobytes()


def test_save_with_an_opened_images_info_keeps_its_own_level(small_image):
    """save(**image.info) re-encodes an opened .drc image at its level, not at the default one."""
    data = diraccodec.encode(small_image, quality=5, effort=1)
    with opened(data) as image:
        assert image.info["level"] == 5 != plugin.DEFAULT_QUALITY
        again = saved(image, effort=1, **image.info)
    assert api.inspect(again).header.quality == 5


def test_image_open_bounds_the_header_by_the_decode_defaults_max_pixels(small_drc: bytes, monkeypatch,
                                                                         restored_defaults):
    """A service lowers max_pixels to refuse big images at Image.open, or raises it to open bigger ones."""
    from diraccodec.errors import LimitExceededError

    width, height = drc.unpack(small_drc).width, drc.unpack(small_drc).height
    plugin.set_decode_options(max_pixels=width * height - 1)
    with pytest.raises(LimitExceededError):
        opened(small_drc)
    plugin.set_decode_options(max_pixels=width * height)
    with opened(small_drc) as image:
        assert image.size == (width, height)
    header = drc.unpack(small_drc)
    header.width, header.height = 12_000, 10_000  # above the default limit: only the header is read at open
    big = drc.pack(header)
    plugin.set_decode_options()
    with pytest.raises(LimitExceededError):
        opened(big)
    plugin.set_decode_options(max_pixels=12_000 * 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own bomb check is not what is tested
    with opened(big) as image:
        assert image.size == (12_000, 10_000)
    # a NumPy number, as the API takes it: its product with the size would overflow int32
    plugin.set_decode_options(max_pixels=np.int32(2_000_000_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opened(big) as image:
            assert image.size == (12_000, 10_000)
    assert type(plugin.set_decode_options()["max_pixels"]) is int


def test_a_file_opened_by_path_is_closed_once_loaded(small_drc: bytes, tmp_path: Path):
    """A file Image.open opened itself is closed after load, so no descriptor leaks while the image lives."""
    path = tmp_path / "small.drc"
    path.write_bytes(small_drc)
    image = Image.open(path)
    file = image.fp
    assert file is not None and not file.closed
    image.load()
    assert file.closed
    assert image.tobytes() == diraccodec.decode(small_drc).tobytes()
    image.close()


def test_save_with_quality_none_uses_the_default_level(small_image):
    """quality=None (as from **options with no value) means no rate given: the default level, not an error."""
    expected = diraccodec.encode(small_image, quality=plugin.DEFAULT_QUALITY, effort=1)
    assert saved(small_image, quality=None, effort=1) == expected
    assert saved(small_image, quality=None, size=None, bpp=None, effort=1) == expected


def test_load_after_close_without_an_earlier_load_fails_without_decoding(small_drc: bytes, monkeypatch):
    """A closed image that was never loaded refuses load at once, without spending a decode first."""
    decodes = counted_decodes(monkeypatch)
    image = opened(small_drc)
    image.close()
    with pytest.raises(ValueError, match="closed image"):
        image.load()
    assert decodes == []
