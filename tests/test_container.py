"""The .drc container: fields round-trip and every malformed file is refused by name."""

from __future__ import annotations

import struct
import zlib

import pytest

from diraccodec.container import drc
from diraccodec.errors import (
    CorruptFileError,
    LimitExceededError,
    NotADrcFileError,
    TruncatedFileError,
    UnsupportedVersionError,
)
from tests.fuzz_drc import reseal


def example(**changes) -> drc.DrcFile:
    fields = dict(width=37, height=5, colour_mode=drc.ColourMode.RGBA, quality=3.5, weights_id=b"12345678",
                  sections={drc.TAG_LATENTS: b"\x01\x02\x03\x04", drc.TAG_ALPHA: b"alpha"})
    fields.update(changes)
    return drc.DrcFile(**fields)


def test_fields_round_trip():
    parsed = drc.unpack(drc.pack(example()))
    assert (parsed.width, parsed.height, parsed.quality) == (37, 5, 3.5)
    assert parsed.colour_mode is drc.ColourMode.RGBA
    assert parsed.weights_id == b"12345678"
    assert parsed.sections == example().sections


def test_layout_matches_the_specification():
    data = drc.pack(example())
    assert data[:4] == b"\x89DRC" and data[4] == drc.FORMAT_VERSION == 3
    assert struct.unpack(">HII", data[6:16]) == (896, 37, 5)
    assert struct.unpack(">I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_levels_below_0_are_signed_in_version_4_alone():
    for level, version, field in ((-1, 4, 0xFF00), (-0.5, 4, 0xFF80), (0, 3, 0), (2, 3, 512)):
        data = drc.pack(example(quality=level))
        assert data[4] == version and struct.unpack(">H", data[6:8])[0] == field
        assert drc.unpack(data).quality == level
    with pytest.raises(ValueError, match="cannot hold the level -1"):
        drc.pack(example(quality=-1, version=3))
    # version 3's field is unsigned: the same bytes read as level 255 (which a decoder refuses)
    signed = drc.pack(example(quality=-1))
    assert drc.unpack(reseal(signed[:4] + b"\x03" + signed[5:-4])).quality == 255


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda d: b"PNG\x00" + d[4:], NotADrcFileError, r"not a \.drc file \(bad magic bytes\)"),
        (lambda d: b"", NotADrcFileError, r"not a \.drc file \(it is empty\)"),
        (lambda d: d[:10], TruncatedFileError, r"truncated \.drc file \(header incomplete\)"),
        (lambda d: d[:-7], TruncatedFileError, r"truncated or corrupt \.drc file \(section header past the end"),
        (lambda d: d[:35] + bytes([d[35] ^ 0x40]) + d[36:], CorruptFileError,
         r"corrupt \.drc file \(checksum mismatch\)"),
        (lambda d: d[:4] + b"\x07" + d[5:], UnsupportedVersionError, r"unsupported \.drc format version 7 "),
    ],
    ids=["magic", "empty", "header", "cut", "bitflip", "version"],
)
def test_malformed_files_are_refused(mutate, error, message):
    """Each damage by its own error (a subclass is another answer: a flipped bit is no cut-off file)."""
    with pytest.raises(error, match=rf"^{message}") as raised:
        drc.unpack(mutate(drc.pack(example())))
    assert type(raised.value) is error


def test_unknown_critical_section_needs_newer_decoder_but_optional_is_skipped():
    optional = example(sections={**example().sections, b"xtra": b"later field"})
    assert drc.unpack(drc.pack(optional)).sections[b"xtra"] == b"later field"
    critical = example(sections={**example().sections, b"XTRA": b"!"})
    with pytest.raises(UnsupportedVersionError, match=r"needs a newer decoder \(unknown critical section b'XTRA'\)"):
        drc.unpack(drc.pack(critical))


def test_huge_claimed_size_is_refused_before_decoding():
    with pytest.raises(LimitExceededError, match="exceeds the limit of"):
        drc.unpack(drc.pack(example(width=200_000, height=200_000)))
    assert drc.unpack(drc.pack(example(width=2000, height=2000)), max_pixels=4_000_000).width == 2000


def test_bytes_after_a_whole_file_are_named_as_such():
    """A file with something appended, or two files joined, is not a cut-off file."""
    whole = drc.pack(example())
    for extra in (b"\x00", whole):
        with pytest.raises(CorruptFileError, match=rf"^corrupt \.drc file \({len(extra)} bytes? after its end: "
                                                   r"bytes appended, or files joined\)$") as raised:
            drc.unpack(whole + extra)
        assert type(raised.value) is CorruptFileError
    with pytest.raises(TruncatedFileError, match=r"unexpected bytes after the last section"):
        drc.unpack(whole[:-4] + b"\x00" * 8)  # no checksum where the last section ends


def test_section_longer_than_file_is_refused():
    body = drc.pack(example())[:-4]
    header_end = 26
    lying = body[:header_end + 4] + struct.pack(">I", 10**9) + body[header_end + 8:]
    with pytest.raises(CorruptFileError, match=r"^corrupt \.drc file \(section longer than the file"):
        drc.unpack(reseal(lying))  # the checksum holds: the writer lied, no cut lost the section
    with pytest.raises(TruncatedFileError, match=r"^truncated or corrupt \.drc file \(section longer"):
        drc.unpack(lying + struct.pack(">I", 0))  # the checksum fails: most likely a cut-off file


def test_a_file_without_latents_or_pixels_is_corrupt():
    """Refused by unpack, so that inspect and decode never meet them."""
    no_latents = example(sections={drc.TAG_ALPHA: b"alpha"})
    with pytest.raises(CorruptFileError, match=r"^corrupt \.drc file \(no latent section\)$"):
        drc.unpack(drc.pack(no_latents))
    for width, height in ((0, 5), (37, 0), (0, 0)):
        with pytest.raises(CorruptFileError, match=r"^corrupt \.drc file \(zero image size\)$"):
            drc.unpack(drc.pack(example(width=width, height=height)))


def test_a_repeated_section_is_corrupt_and_an_empty_last_one_is_read():
    body = drc.pack(example())[:-4]
    count_at = drc._HEADER.size - 2
    repeated = body[:count_at] + struct.pack(">H", 3) + body[count_at + 2:] + body[drc._HEADER.size:][:8 + 4]
    with pytest.raises(CorruptFileError, match=r"^corrupt \.drc file \(section b'LATS' repeated\)$"):
        drc.unpack(reseal(repeated))
    empty_last = example(sections={**example().sections, b"note": b""})
    assert drc.unpack(drc.pack(empty_last)).sections[b"note"] == b""


def test_a_header_with_no_room_for_its_checksum_is_truncated():
    header = drc.pack(example())[:drc._HEADER.size]
    without_sections = header[:-2] + struct.pack(">H", 0)
    for cut in range(len(header), len(header) + drc._TRAILER.size):
        with pytest.raises(TruncatedFileError, match=r"^truncated \.drc file \(header incomplete\)$"):
            drc.unpack((without_sections + b"\x00" * 4)[:cut])
    with pytest.raises(CorruptFileError, match=r"\(no latent section\)"):  # whole: header and checksum
        drc.unpack(reseal(without_sections))
