"""EXIF and XMP: carried from the input to every output that holds them, upright and without
the EXIF thumbnail, left out on request, and refused in one line where a file's are corrupt."""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import warnings
import zlib

import pytest
from PIL import ExifTags, Image

import diraccodec
from diraccodec.batch import BatchSettings
from diraccodec.batch.jobs import Job, run_job
from diraccodec.container import drc
from diraccodec.errors import CorruptFileError, InvalidOptionError
from diraccodec.image.files import image_bytes
from diraccodec.image.metadata import MAX_METADATA_BYTES, Metadata, inflate, read_metadata
from tests.conftest import (
    DATE_ORIGINAL,
    MAKE,
    ORIENTATION,
    XMP,
    camera_jpeg,
    exif_with_thumbnail,
    parsed,
    saved_as,
    swapped_primaries_profile,
)


def test_the_hand_written_exif_is_what_a_camera_writes(small_image):
    with Image.open(io.BytesIO(camera_jpeg(small_image))) as photo:
        tags = photo.getexif()
        assert tags[MAKE] == "Cam" and tags[ORIENTATION] == 6
        assert tags.get_ifd(ExifTags.IFD.Exif)[DATE_ORIGINAL] == "2026:01:02 03:04:05"
        assert tags.get_ifd(ExifTags.IFD.IFD1)[0x0202] > 100  # the thumbnail's length
        assert photo.info["xmp"] == XMP


def test_exif_and_xmp_are_carried_upright_and_without_the_thumbnail(small_image):
    data = diraccodec.encode(camera_jpeg(small_image), 1, effort=1)
    sections = drc.unpack(data).sections
    assert {drc.TAG_EXIF, drc.TAG_XMP} <= set(sections)
    assert all(tag[:1].islower() for tag in (drc.TAG_EXIF, drc.TAG_XMP))  # optional: earlier decoders skip them
    decoded = diraccodec.decode(data)
    assert decoded.size == (small_image.height, small_image.width)  # the pixels were turned upright
    tags = parsed(decoded.info["exif"])
    assert tags[MAKE] == "Cam" and ORIENTATION not in tags  # no viewer turns them again
    assert tags.get_ifd(ExifTags.IFD.Exif)[DATE_ORIGINAL] == "2026:01:02 03:04:05"
    assert not tags.get_ifd(ExifTags.IFD.IFD1)
    assert len(decoded.info["exif"]) < len(exif_with_thumbnail(6)) - 300
    assert b'dc:format="image/jpeg"' in decoded.info["xmp"] and b"Orientation" not in decoded.info["xmp"]
    assert diraccodec.inspect(data).metadata == Metadata(decoded.info["exif"][6:], decoded.info["xmp"])


def test_a_tiffs_descriptive_tags_are_its_exif_and_its_layout_is_not(small_image):
    camera = parsed(exif_with_thumbnail(6)[6:])  # make, orientation 6 and the Exif IFD; Pillow drops IFD1
    camera[0x8298] = "Someone"  # Copyright
    data = diraccodec.encode(saved_as(small_image, "TIFF", exif=camera), 1, effort=1)
    decoded = diraccodec.decode(data)
    assert decoded.size == (small_image.height, small_image.width)  # turned upright, as a JPEG is
    tags = parsed(decoded.info["exif"])
    assert tags[MAKE] == "Cam" and tags[0x8298] == "Someone" and ORIENTATION not in tags
    assert tags.get_ifd(ExifTags.IFD.Exif)[DATE_ORIGINAL] == "2026:01:02 03:04:05"
    assert not {0x0100, 0x0103, 0x0111, 0x0117} & set(tags)  # width, compression, strips: the TIFF's own
    plain = saved_as(small_image, "TIFF")  # layout tags alone: nothing to carry
    assert drc.TAG_EXIF not in drc.unpack(diraccodec.encode(plain, 1, effort=1)).sections


def test_metadata_false_leaves_both_out(small_image):
    photo = camera_jpeg(small_image, orientation=1)
    stripped = diraccodec.encode(photo, 1, effort=1, metadata=False)
    with Image.open(io.BytesIO(photo)) as opened:
        bare = opened.convert("RGB")
    bare.info.clear()
    assert stripped == diraccodec.encode(bare, 1, effort=1)
    assert not {drc.TAG_EXIF, drc.TAG_XMP} & set(drc.unpack(stripped).sections)
    assert not {"exif", "xmp"} & set(diraccodec.decode(stripped).info)
    with pytest.raises(InvalidOptionError, match="metadata"):
        diraccodec.encode(photo, 1, metadata="no")


def test_a_size_target_below_the_smallest_file_counts_the_metadata_that_strip_saves(small_image):
    photo = camera_jpeg(small_image, orientation=1)  # large enough for level -1 to make the smallest file
    smallest, stripped = (len(diraccodec.encode(photo, -1, effort=1, metadata=keep)) for keep in (True, False))
    sections = drc.unpack(diraccodec.encode(photo, -1, effort=1)).sections
    metadata = sum(8 + len(sections[tag]) for tag in (drc.TAG_EXIF, drc.TAG_XMP))  # tag, length, payload
    assert metadata == smallest - stripped > 0
    with pytest.raises(InvalidOptionError, match=rf"^a target of {stripped} bytes is below the smallest file at level "
                                                 rf"-1 \({smallest} bytes, {metadata} of them metadata that --strip "
                                                 rf"\(metadata=False\) leaves out\); ask for at least that$"):
        diraccodec.encode(photo, size=stripped, effort=1)
    assert len(diraccodec.encode(photo, size=stripped, effort=1, metadata=False)) == stripped


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_every_output_format_that_holds_metadata_gets_it(small_image, image_format):
    decoded = diraccodec.decode(diraccodec.encode(camera_jpeg(small_image), 1, effort=1))
    with Image.open(io.BytesIO(image_bytes(decoded, image_format))) as written:
        tags = written.getexif()
        assert tags[MAKE] == "Cam"
        assert tags.get_ifd(ExifTags.IFD.Exif)[DATE_ORIGINAL] == "2026:01:02 03:04:05"
        assert written.info["xmp"] == decoded.info["xmp"]
        if image_format == "PNG":
            assert written.tobytes() == decoded.tobytes()


def test_a_jpeg_output_too_small_for_the_xmp_is_written_without_it_and_keeps_the_exif(small_image):
    image = small_image.copy()
    image.info["xmp"] = b"<x:xmpmeta>" + bytes(70_000) + b"</x:xmpmeta>"  # JPEG's markers hold 64 KB
    tags = Image.Exif()
    tags[MAKE] = "Cam"
    image.info["exif"] = b"Exif\x00\x00" + tags.tobytes()
    with pytest.warns(UserWarning, match="XMP of 70023 bytes left out of the JPEG output"):
        written = image_bytes(image, "JPEG")
    with Image.open(io.BytesIO(written)) as reopened:
        assert "xmp" not in reopened.info and reopened.size == image.size
        assert reopened.getexif()[MAKE] == "Cam"
    assert "xmp" in Image.open(io.BytesIO(image_bytes(image, "PNG"))).info  # PNG holds it


def test_unreadable_exif_is_left_out_with_a_warning(small_image):
    image = small_image.copy()
    image.info["exif"] = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"  # IFD0 far past the end
    with pytest.warns(UserWarning, match="EXIF left out"):
        assert read_metadata(image) == Metadata()


def test_corrupt_metadata_fails_in_one_line_before_any_decoding(small_image):
    header = drc.unpack(diraccodec.encode(camera_jpeg(small_image), 1, effort=1))
    for tag, what in ((drc.TAG_EXIF, "EXIF"), (drc.TAG_XMP, "XMP")):
        for payload in (b"not zlib", header.sections[tag][:-3], zlib.compress(b"")):
            broken = dataclasses.replace(header, sections={**header.sections, tag: payload})
            with pytest.raises(CorruptFileError, match=f"corrupt .drc file \\({what}\\)"):
                diraccodec.decode(drc.pack(broken))
    with pytest.raises(CorruptFileError, match="XMP"):
        inflate(zlib.compress(bytes(MAX_METADATA_BYTES + 1)), MAX_METADATA_BYTES, "XMP")  # a bomb stops at the cap


def test_the_pillow_plugin_and_batch_carry_it_too(small_image, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(camera_jpeg(small_image))
    with Image.open(photo) as opened:
        opened.save(tmp_path / "plugin.drc", quality=1, effort=1)
    with Image.open(tmp_path / "plugin.drc") as reopened:  # from the header, before any decoding
        assert parsed(reopened.info["exif"])[MAKE] == "Cam" and reopened.info["xmp"].startswith(b"<x:xmpmeta")
    for metadata in (True, False):
        target = tmp_path / f"batch-{metadata}.drc"
        result = run_job(Job(photo, target), BatchSettings(quality=1, effort=1, metadata=metadata))
        assert result.status == "converted", result.message
        assert (drc.TAG_EXIF in drc.unpack(target.read_bytes()).sections) is metadata


def test_another_thread_s_warning_during_the_exif_rewrite_is_not_taken_for_pillow_s(small_image, monkeypatch):
    """Recording Pillow's complaints about an EXIF block records every thread's warnings in that
    moment (warnings.catch_warnings is process-wide): only those from Pillow's code count."""
    import warnings

    from diraccodec.image import metadata

    load = Image.Exif.load

    def load_while_another_thread_warns(exif: Image.Exif, data: bytes) -> None:
        warnings.warn("another thread's own warning", UserWarning, stacklevel=1)  # from this file, not Pillow
        load(exif, data)

    monkeypatch.setattr(Image.Exif, "load", load_while_another_thread_warns)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        rewritten = metadata._rewritten_exif(exif_with_thumbnail(6))
    monkeypatch.undo()
    assert rewritten is not None and parsed(rewritten)[0x0112] == 6  # the orientation
    assert [str(w.message) for w in shown] == []


def test_a_profile_and_xmp_over_pillows_png_text_limit_decode_to_png_and_encode_again(tmp_path, small_image):
    """Pillow's PNG reader refuses a chunk over 1 MiB by default; the format carries up to 16 MiB."""
    from click.testing import CliRunner
    from PIL import PngImagePlugin

    from diraccodec.cli import main

    profile, xmp = bytes(range(256)) * 6_000, b"<x:xmpmeta>" + b"a" * 2_000_000 + b"</x:xmpmeta>"  # 1.5 and 2 MB
    chunks = PngImagePlugin.PngInfo()
    chunks.add_itxt("XML:com.adobe.xmp", xmp.decode(), zip=True)  # where PNG keeps XMP
    small_image.crop((0, 0, 16, 16)).save(tmp_path / "big.png", icc_profile=profile, pnginfo=chunks)
    encode = ["encode", "-q", "2", "-e", "1", "-o"]
    for command in ([*encode, "big.drc", "big.png"], ["decode", "big.drc", "-o", "out.png"],
                    [*encode, "again.drc", "out.png"]):
        result = CliRunner().invoke(main, [str(tmp_path / word) if "." in word else word for word in command])
        assert result.exit_code == 0, result.output
    again = diraccodec.decode((tmp_path / "again.drc").read_bytes())
    assert again.info["icc_profile"] == profile and again.info["xmp"] == xmp


def test_pillows_png_text_limit_is_restored_after_a_read():
    """The raised limit is process-wide: left raised, every other PNG read in the process loses Pillow's guard."""
    from PIL import PngImagePlugin

    from diraccodec.image.metadata import pillow_reads_whole_metadata

    before = PngImagePlugin.MAX_TEXT_CHUNK
    assert before < 16 << 20  # Pillow's own 1 MiB, or what this process set
    with pillow_reads_whole_metadata():
        assert PngImagePlugin.MAX_TEXT_CHUNK >= 16 << 20
    assert before == PngImagePlugin.MAX_TEXT_CHUNK
    with pytest.raises(RuntimeError), pillow_reads_whole_metadata():
        raise RuntimeError("a read that fails")
    assert before == PngImagePlugin.MAX_TEXT_CHUNK


def test_a_jpeg_output_keeps_xmp_that_exactly_fills_its_marker_and_leaves_out_one_byte_more(small_image):
    """JPEG's XMP marker holds 65,533 bytes less the 29 of its namespace: one byte more must be left out, not fail."""
    image = small_image.crop((0, 0, 8, 8))
    for size, kept in ((65533 - 29, True), (65533 - 28, False)):
        image.info["xmp"] = b"<x:xmpmeta>" + b"a" * (size - 23) + b"</x:xmpmeta>"
        assert len(image.info["xmp"]) == size
        if kept:
            written = image_bytes(image, "JPEG")
        else:
            with pytest.warns(UserWarning, match=f"XMP of {size} bytes left out of the JPEG output"):
                written = image_bytes(image, "JPEG")
        with Image.open(io.BytesIO(written)) as reopened:
            assert (reopened.info.get("xmp") == image.info["xmp"]) is kept


def test_a_jpeg_output_keeps_exif_that_exactly_fills_its_marker(small_image):
    """65,533 bytes of EXIF (its prefix counted) is what one JPEG marker holds: all of it fits."""
    import struct
    import warnings

    image = small_image.crop((0, 0, 8, 8))
    # by hand, as Pillow writes no odd total: the prefix (6), the TIFF header (8), an IFD of two entries (30)
    description = 65533 - 44
    image.info["exif"] = (b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 2)
                          + struct.pack("<HHI", MAKE, 2, 4) + b"Cam\x00"
                          + struct.pack("<HHII", 0x010E, 2, description, 44 - 6) + struct.pack("<I", 0)
                          + b"d" * (description - 1) + b"\x00")
    assert len(image.info["exif"]) == 65533
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = image_bytes(image, "JPEG")
    with Image.open(io.BytesIO(written)) as reopened:
        assert reopened.getexif()[MAKE] == "Cam" and len(reopened.getexif()[0x010E]) > 65000


def test_every_descriptive_tag_of_a_tiff_is_kept(small_image):
    """Each of these says who made the photo, with what and when: none may be lost on the way."""
    from diraccodec.image.metadata import TIFF_DESCRIPTIVE_TAGS

    tags = Image.Exif()
    values = {tag: f"value {tag:#06x}" for tag in TIFF_DESCRIPTIVE_TAGS if tag != ORIENTATION}
    for tag, value in values.items():
        tags[tag] = value
    tags[ORIENTATION] = 3
    with Image.open(io.BytesIO(saved_as(small_image.crop((0, 0, 8, 8)), "TIFF", exif=tags))) as tiff:
        kept = parsed(read_metadata(tiff).exif)
    assert {tag: kept.get(tag) for tag in values} == values
    assert kept[ORIENTATION] == 3 and len(TIFF_DESCRIPTIVE_TAGS) == 9


def test_exif_read_in_part_is_kept_with_a_warning(small_image):
    """The part Pillow can read is carried, but the loss of the rest must be said, not silent."""
    import struct

    image = small_image.crop((0, 0, 8, 8))
    image.info["exif"] = (b"II*\x00" + struct.pack("<IH", 8, 2)
                          + struct.pack("<HHII", 0x010E, 2, 100, 5000)  # ImageDescription far past the end
                          + struct.pack("<HHI", MAKE, 2, 4) + b"Cam\x00" + struct.pack("<I", 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exif = read_metadata(image).exif
    said = [str(warning.message) for warning in caught]
    pillows_reading = Image.Exif()  # what this Pillow makes of the bytes itself decides which loss is due
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pillows_reading.load(image.info["exif"])
    if len(pillows_reading):  # newer Pillows read the part they can
        assert exif is not None and dict(parsed(exif)) == {MAKE: "Cam"}
        assert any(re.match(r"EXIF carried in part: some of it cannot be read \(.*270", text) for text in said), said
    else:  # Pillow 11.3 gives the whole up
        assert any(text.startswith("EXIF left out: it cannot be read") for text in said), said


@pytest.mark.parametrize(("exif", "said"), [
    (b"\xff\xff" + bytes(20), r"Corrupt EXIF data\."),  # 65535 entries in 20 bytes
    (struct.pack(">H", 1) + struct.pack(">HHII", MAKE, 2, 100, 5000) + bytes(4),  # Make far past the end
     r"Tag data larger than file|Truncated File Read"),  # as Pillow 13, 11.3 word it
])
def test_a_jpegs_corrupt_exif_is_one_warning(small_image, exif, said):
    """Pillow complains of it as it opens the JPEG (reading the resolution from it), and the
    metadata's reading says what becomes of it: the user hears it once."""
    corrupt = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08" + exif
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diraccodec.encode(saved_as(small_image, "JPEG", exif=corrupt), 2, effort=1)
    warned = [str(warning.message) for warning in caught]
    assert len(warned) == 1 and re.match(rf"EXIF left out: it cannot be read \(({said})", warned[0]), warned


def test_exif_that_pillow_raises_on_is_left_out_with_a_warning(small_image):
    """Pillow raises, rather than warns, on EXIF without a TIFF header: that loss must be said too."""
    image = small_image.crop((0, 0, 8, 8))
    image.info["exif"] = b"garbage"
    with pytest.warns(UserWarning, match=r"^EXIF left out: it cannot be read \(not a TIFF file"):
        assert read_metadata(image) == Metadata()


def test_exif_xmp_and_a_profile_are_stored_at_zlibs_highest_compression(small_image):
    """Stored once and read at every decode, they count towards each file's bits: the encoder
    spends the time for the smallest form (zlib level 9, which the stream's header names)."""
    photo = camera_jpeg(small_image)
    with Image.open(io.BytesIO(photo)) as image:
        with_profile = saved_as(image, "JPEG", quality=95, exif=image.info["exif"], xmp=image.info["xmp"],
                                icc_profile=swapped_primaries_profile())
    sections = drc.unpack(diraccodec.encode(with_profile, 1, effort=1)).sections
    for tag in (drc.TAG_EXIF, drc.TAG_XMP, drc.TAG_ICC_COMPRESSED):
        stored = sections[tag]
        part = zlib.decompress(stored)
        assert stored == zlib.compress(part, 9) and stored[1] >> 6 == 3, tag  # FLEVEL 3: the smallest form
        assert len(stored) == min(len(zlib.compress(part, level)) for level in range(10)), tag


@pytest.mark.parametrize("part", ["exif", "xmp", "icc_profile"])
def test_a_part_longer_than_a_decoder_inflates_is_left_out_with_a_warning(small_image, part):
    """A part over the 16 MiB a decoder inflates would make a file every decoder refuses as
    corrupt: the encoder leaves it out, says so, and the file decodes."""
    from diraccodec.image.profiles import MAX_PROFILE_BYTES

    assert MAX_PROFILE_BYTES == MAX_METADATA_BYTES == 16 << 20
    image, description = small_image.copy(), "d" * (MAX_METADATA_BYTES + 1)
    if part == "exif":
        tags = Image.Exif()
        tags[0x010E] = description  # ImageDescription
        image.info["exif"] = tags.tobytes()
    else:
        image.info[part] = description.encode()
    name = {"exif": "EXIF", "xmp": "XMP", "icc_profile": "ICC profile"}[part]
    with pytest.warns(UserWarning, match=rf"^{name} left out: 16,777,2\d\d bytes, more than a \.drc file holds "
                                         r"\(16 MiB\)"):
        data = diraccodec.encode(image, 2, effort=1)
    info = diraccodec.inspect(data)
    assert info.header.metadata == Metadata() and info.header.icc_profile is None
    assert diraccodec.decode(data).size == small_image.size
    image.info[part] = image.info[part][: MAX_METADATA_BYTES - 4096] if part != "exif" else None  # fits: kept
    if part != "exif":
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kept = diraccodec.inspect(diraccodec.encode(image, 2, effort=1)).header
        assert (kept.metadata.xmp if part == "xmp" else kept.icc_profile) == image.info[part]
