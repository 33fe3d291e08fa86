"""The API's own promises: target sizes, one rate option at a time, and safety across threads."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import diraccodec
from diraccodec.cli import main
from diraccodec.cli.common import parse_size
from diraccodec.errors import DiracError, ImageReadError, InvalidOptionError
from tests.conftest import DATA, ROOT, saved_as


@pytest.mark.parametrize("target", [250, 500, 1000])
def test_a_size_target_gives_the_highest_level_whose_file_fits(small_image, target):
    """The targets lie between the files of levels -1 and 8 (about 120 and 1,350 bytes)."""
    data = diraccodec.encode(small_image, size=target)
    level = diraccodec.inspect(data).header.quality
    assert len(data) <= target and level < 8
    assert len(diraccodec.encode(small_image, level + 1 / 256)) > target  # the next step up would not fit
    assert diraccodec.encode(small_image, level) == data


def test_a_size_target_above_the_top_level_gives_the_top_level(small_image):
    data = diraccodec.encode(small_image, size=9000)
    assert diraccodec.inspect(data).header.quality == 8 and data == diraccodec.encode(small_image, 8)


@pytest.mark.slow
def test_a_size_target_on_a_photo_lands_within_3_percent(sample_image):
    data = diraccodec.encode(sample_image, size=10_000)
    assert 9_700 <= len(data) <= 10_000


@pytest.mark.slow
def test_a_bpp_target_is_a_size_in_bits_per_pixel(small_image):
    pixels = small_image.width * small_image.height
    data = diraccodec.encode(small_image, bpp=1.0)
    assert len(data) <= pixels / 8 and data == diraccodec.encode(small_image, size=pixels // 8)


@pytest.mark.slow
def test_a_searched_size_target_fits_too(sample_image):
    data = diraccodec.encode(sample_image, size=6_000, effort=2)
    assert len(data) <= 6_000 and len(data) >= 0.97 * 6_000


def test_a_target_between_the_files_of_levels_0_and_1_lands_below_level_1(small_image):
    smallest, level_1 = (len(diraccodec.encode(small_image, q, effort=1)) for q in (0, 1))
    target = (smallest + level_1) // 2
    data = diraccodec.encode(small_image, size=target, effort=1)
    assert smallest <= len(data) <= target and 0 < diraccodec.inspect(data).header.quality < 1


def test_a_size_target_reports_the_search_of_every_trial_as_one_count(small_image):
    """Each trial file's search counted its tiles from 1 again: a bar went back at every trial."""
    heard: list[tuple[int, int]] = []
    target = len(diraccodec.encode(small_image, 4))
    data = diraccodec.encode(small_image, size=target, progress=lambda done, total: heard.append((done, total)))
    assert len(data) <= target and len(heard) > 2  # several searched trials
    assert all(done <= total for done, total in heard) and heard[-1][0] == heard[-1][1]
    assert [done for done, _ in heard] == sorted({done for done, _ in heard})  # never back, never stands


def test_a_size_target_finds_the_files_without_the_detail_map_that_a_small_image_makes_smaller(small_image):
    """Below level 3 the file carries the detail map: on a 32 x 32 image the first level without
    it makes a smaller file than level -1, so sizes do not grow with the level all the way."""
    tiny = small_image.crop((0, 0, 32, 32))
    below, at_3 = len(diraccodec.encode(tiny, 2.99, effort=1)), len(diraccodec.encode(tiny, 3, effort=1))
    lowest = len(diraccodec.encode(tiny, -1, effort=1))
    assert at_3 < min(below, lowest)  # what the test is about
    for effort in (1, 2):
        data = diraccodec.encode(tiny, size=at_3, effort=effort)
        assert len(data) <= at_3 and diraccodec.inspect(data).header.quality >= 3
    with pytest.raises(InvalidOptionError, match=rf"^a target of {at_3 - 1} bytes is below the smallest file at "
                                                 rf"level 3 \({at_3} bytes\); ask for at least that$"):
        diraccodec.encode(tiny, size=at_3 - 1, effort=1)


def test_size_targets_search_the_levels_with_and_without_the_map_apart():
    from types import SimpleNamespace

    from diraccodec import api

    def file(level: float, searched: bool = True) -> bytes:  # the map adds 350 bytes below level 3
        size = round((level + 2) * 100 + (350 if level < 3 else 0))
        return f"{level:.4f}".encode().ljust(size, b"\0")  # which level made it, and its size

    tried = []

    def counted(level: float, searched: bool = True) -> bytes:
        tried.append(level)
        return file(level, searched)

    def answer(target: int) -> float:
        """The level of the file the search gives, checked to be the highest of its run that fits."""
        data = api.encode_to_size(encoder, target, num_levels=8)
        level = float(data.rstrip(b"\0"))
        assert len(data) <= target < len(file(level + 1 / 256)) or level == 8
        return level

    encoder = SimpleNamespace(file=counted, search=SimpleNamespace(passes=0, progress=None), map_ends_at=lambda: 3.0,
                              metadata_bytes=lambda: 0)
    assert 3.1 < answer(520) < 3.3  # not about -0.3, whose file fits too
    assert len(tried) <= 1 + 11  # level 3, a bisection of levels 3-8 (1,280 grid steps), none of the levels below
    tried.clear()
    assert -0.8 < answer(480) < -0.6  # only the levels below have room
    assert len(tried) <= 1 + 1 + 10  # level 3, level -1, a bisection of levels -1 to 3 (1,024 grid steps)
    tried.clear()
    with pytest.raises(InvalidOptionError, match=r"below the smallest file at level -1 \(450 bytes\)"):
        api.encode_to_size(encoder, 449, num_levels=8)
    assert len(tried) == 2  # the smallest file of each run


def test_targets_below_the_smallest_file_and_bad_rates_are_clear_errors(small_image):
    with pytest.raises(InvalidOptionError, match=r"below the smallest file at level -1 \(\d+ bytes\)"):
        diraccodec.encode(small_image, size=100)
    with pytest.raises(InvalidOptionError, match="exactly one of quality, size or bpp"):
        diraccodec.encode(small_image, 3, size=5000)
    with pytest.raises(InvalidOptionError, match="give a quality"):
        diraccodec.encode(small_image)
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(InvalidOptionError, match="bpp must be a positive number"):
            diraccodec.encode(small_image, bpp=bad)
    with pytest.raises(InvalidOptionError, match=r"1e-09 bpp is less than one byte for an image of \d+ pixels"):
        diraccodec.encode(small_image, bpp=1e-9)
    with pytest.raises(InvalidOptionError, match=r"1e\+308 bpp is too many bits for an image of"):  # beyond a float
        diraccodec.encode(small_image, bpp=1e308)


def test_a_bad_size_fails_before_the_analysis(small_image, monkeypatch):
    from diraccodec import api

    def no_analysis(*arguments, **options):
        raise AssertionError("the image was analysed before its target was checked")

    monkeypatch.setattr(api, "Encoder", no_analysis)
    for bad in (0, -3, 1.5):
        with pytest.raises(InvalidOptionError, match="size must be a positive number of bytes"):
            diraccodec.encode(small_image, size=bad)


def test_numpy_numbers_and_bytes_like_inputs_are_taken(small_image):
    data = diraccodec.encode(small_image, 3, effort=1)
    assert diraccodec.encode(small_image, np.float32(3), effort=np.int64(1)) == data
    png = saved_as(small_image)
    assert diraccodec.encode(bytearray(png), 3, effort=1) == data
    assert diraccodec.encode(memoryview(png), 3, effort=1) == data
    assert diraccodec.encode(io.BytesIO(png), 3, effort=1) == data  # a file object
    assert diraccodec.encode(np.frombuffer(png, np.uint8), 3, effort=1) == data
    assert diraccodec.encode(np.frombuffer(png, np.uint8)[:, None], 3, effort=1) == data  # cv2.imencode's
    pixels = np.asarray(diraccodec.decode(data, 0))
    for same in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        assert np.array_equal(np.asarray(diraccodec.decode(same, np.int64(0), np.int64(5))), pixels)
    assert diraccodec.inspect(bytearray(data)).file_size == len(data)
    assert np.array_equal(np.asarray(diraccodec.decode(data, 0, restore=np.True_)), pixels)


@pytest.mark.parametrize(("call", "message"), [
    (lambda image, data: diraccodec.encode(image, "3"), r"^quality must be a number, got '3'$"),
    (lambda image, data: diraccodec.encode(image, 3, effort=2.0), r"^effort must be a whole number, got 2.0$"),
    (lambda image, data: diraccodec.encode(image, 3, steps=1.0), r"^steps must be a whole number, got 1.0$"),
    (lambda image, data: diraccodec.encode(image, 3, detail_map=1), r"^detail_map must be True or False or None"),
    (lambda image, data: diraccodec.encode(image, 3, max_pixels=-1), r"^max_pixels must be a whole number of at "),
    (lambda image, data: diraccodec.encode(image, 3, max_pixels=0), r"^max_pixels must be .* at least 1, got 0$"),
    (lambda image, data: diraccodec.encode(image, 3, steps=-1), r"^steps must be between 0 and 100, got -1$"),
    (lambda image, data: diraccodec.encode(image, 3, steps=101), r"^steps must be between 0 and 100, got 101$"),
    (lambda image, data: diraccodec.encode(np.zeros((16, 16, 3), np.uint8), 3),
     r"^image must be a PIL image, a path or an image file's bytes, got numpy.ndarray: make a PIL image of its "),
    (lambda image, data: diraccodec.encode(None, 3), r"^image must be .* got NoneType$"),
    (lambda image, data: diraccodec.encode(image, 10**400), r"^quality must be between -1 and 8, got 1000"),
    (lambda image, data: diraccodec.encode(image, bpp=10**400), r"^bpp must be a positive number, got 1000"),
    (lambda image, data: diraccodec.encode(image, 3, effort=10**5000), r"^effort must be between 1 and 5, got a "
                                                                      r"number too long to print$"),
    (lambda image, data: diraccodec.encode(io.StringIO("text"), 3), r"^an image file object must be open in binary"),
    (lambda image, data: diraccodec.encode(np.zeros(64, np.int8), 3),
     r"^an image file's bytes in an array must be uint8, got int8$"),
    (lambda image, data: diraccodec.encode(image, Decimal("2.5")), r"^quality must be a number, got Decimal\('2.5'\)$"),
    (lambda image, data: diraccodec.decode(data, 1, "a"), r"^seed must be a whole number, got 'a'$"),
    (lambda image, data: diraccodec.decode(data, 0, restore="no"), r"^restore must be True or False, got 'no'$"),
    (lambda image, data: diraccodec.decode(data, 0, exact=1), r"^exact must be True or False, got 1$"),
    (lambda image, data: diraccodec.decode(data, 0, max_pixels=None), r"^max_pixels must be a whole number"),
    (lambda image, data: diraccodec.decode("photo.drc"),
     r"^give the .drc file's bytes, not a path: Path\('photo.drc'\).read_bytes\(\)$"),
    (lambda image, data: diraccodec.inspect(None), r"^a .drc file must be given as bytes, got NoneType$"),
    (lambda image, data: diraccodec.encode(image, 3, effort=1, progress=5),
     r"^progress must be a function of \(done, total\) or None, got 5$"),
    (lambda image, data: diraccodec.decode(data, 0, progress="bar"), r"^progress must be a function of "),
    (lambda image, data: diraccodec.decode(data, 0, weights=3), r"^weights must be a path or None, got 3$"),
    (lambda image, data: diraccodec.encode(image, 3, weights=b"w"), r"^weights must be a path or None, got b'w'$"),
])
def test_options_and_inputs_of_the_wrong_kind_are_refused_by_name(small_image, call, message):
    data = diraccodec.encode(small_image, 1, effort=1)
    with pytest.raises(InvalidOptionError, match=message):
        call(small_image, data)


def test_the_decode_options_check_takes_what_decode_takes():
    """The plugin checks its decode options with it: a keyword decode gained and it lacked would
    be a TypeError there."""
    import inspect

    from diraccodec import api

    decode_options = dict(inspect.signature(api.decode).parameters)
    del decode_options["data"]
    assert dict(inspect.signature(api.check_decode_options).parameters) == decode_options


def test_a_file_object_is_read_from_its_start_as_pillow_reads_one(small_image):
    png = io.BytesIO()
    small_image.save(png, format="PNG")  # the buffer is left at its end
    png.read(3)
    assert diraccodec.encode(png, 3, effort=1) == diraccodec.encode(small_image, 3, effort=1)


def test_a_pil_image_that_cannot_be_read_is_an_image_read_error(small_image):
    closed = small_image.copy()
    closed.close()
    with pytest.raises(ImageReadError, match=r"^cannot read the image: Operation on closed image$"):
        diraccodec.encode(closed, 3, effort=1)
    png = saved_as(small_image)
    with Image.open(io.BytesIO(png)) as unread:
        pass  # closed before its pixels were read
    with pytest.raises(ImageReadError, match=r"^cannot read the image: its file was closed before its pixels "):
        diraccodec.encode(unread, 3, effort=1)
    lazily = Image.open(io.BytesIO(png[:-200]))  # its header read, its pixels not yet
    with pytest.raises(ImageReadError, match=r"^cannot read image photo: image file is truncated"):
        diraccodec.encode(lazily, 3, effort=1, label="photo")


def test_metadata_a_caller_sets_in_info_is_checked_or_taken_as_pillow_takes_it(small_image):
    for name, value, kind in (("xmp", 5, "int"), ("icc_profile", "abc", "str"), ("exif", [1], "list")):
        image = small_image.copy()
        image.info[name] = value
        with pytest.raises(InvalidOptionError, match=rf"^the image's info\['{name}'\] must be bytes, got {kind}$"):
            diraccodec.encode(image, 3, effort=1)
    image, exif = small_image.copy(), Image.Exif()
    exif[0x010F] = "a camera make"
    image.info["exif"] = exif  # an Image.Exif, as Pillow's writers take it
    assert diraccodec.decode(diraccodec.encode(image, 3, effort=1)).getexif()[0x010F] == "a camera make"


def test_an_animated_pil_image_warns_that_its_current_frame_is_encoded(small_image):
    gif = io.BytesIO()
    small_image.save(gif, "GIF", save_all=True, append_images=[small_image.rotate(180)])
    animated = Image.open(gif)
    animated.seek(1)
    with pytest.warns(UserWarning, match=r"^the image is animated \(2 frames\): encoding frame 2 only$"):
        data = diraccodec.encode(animated, 3, effort=1)
    assert data == diraccodec.encode(animated.convert("RGB"), 3, effort=1)


def test_a_warning_is_a_dirac_warning_at_the_caller_s_line_however_deep_it_arises(tmp_path, small_image,
                                                                                    monkeypatch, request):
    """In the API's reading of an image, in the plugin under Pillow's save, or in a context
    manager's start within a decode: a warning names the caller's line, so that a filter by
    module or line applies to it."""
    from diraccodec import compute

    gif = io.BytesIO()
    small_image.save(gif, "GIF", save_all=True, append_images=[small_image.rotate(180)])
    dark = Image.fromarray(np.linspace(0, 1.02, 64 * 64, dtype=np.float32).reshape(64, 64))
    data = diraccodec.encode(small_image, 3, effort=1)
    monkeypatch.setattr(compute, "mkl_is_strict", lambda: False)  # the exact mode then warns, once a process
    compute._warn_not_strict.cache_clear()
    request.addfinalizer(compute._warn_not_strict.cache_clear)
    calls = ((lambda: diraccodec.encode(Image.open(gif), 3, effort=1), diraccodec.DiracWarning),
             (lambda: dark.save(tmp_path / "x.drc", quality=2, effort=1), diraccodec.DiracWarning),
             (lambda: diraccodec.decode(data, 0, device="cpu", exact=True), RuntimeWarning))
    for call, category in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        assert [(w.category, w.filename, w.lineno) for w in caught] == \
            [(category, __file__, call.__code__.co_firstlineno)]
    assert issubclass(diraccodec.DiracWarning, UserWarning)


def test_inspect_reads_the_sections_every_decode_reads_first(small_image):
    from diraccodec.container import drc
    from diraccodec.errors import CorruptFileError

    header = diraccodec.inspect(diraccodec.encode(small_image.convert("RGBA"), 1, effort=1)).header
    for tag, what in ((drc.TAG_EXIF, "EXIF"), (drc.TAG_XMP, "XMP"), (drc.TAG_ICC_COMPRESSED, "ICC")):
        damaged = drc.DrcFile(header.width, header.height, header.colour_mode, header.quality, header.weights_id,
                              {**header.sections, tag: b"\x01\x02junk"})
        with pytest.raises(CorruptFileError, match=what):
            diraccodec.inspect(drc.pack(damaged))
    sections = dict(header.sections)
    del sections[drc.TAG_ALPHA]
    without_alpha = drc.pack(drc.DrcFile(header.width, header.height, header.colour_mode, header.quality,
                                         header.weights_id, sections))
    with pytest.raises(CorruptFileError, match=r"alpha plane missing"):
        diraccodec.inspect(without_alpha)


def test_an_image_without_pixels_is_refused():
    with pytest.raises(ImageReadError, match=r"^the image has no pixels \(0x5\)$"):
        diraccodec.encode(Image.new("RGB", (0, 5)), 3)


def test_size_texts_use_decimal_and_binary_units():
    assert [parse_size(text) for text in ("30KB", "30kb", "30 KB", "1.5MB", "2KiB", "512", "512B")] == [
        30_000, 30_000, 30_000, 1_500_000, 2048, 512, 512]
    for bad in ("30XB", "KB", "-3KB"):
        with pytest.raises(DiracError, match=rf"^--size takes a number with an optional unit \(B, KB, .*got '{bad}'$"):
            parse_size(bad)
    with pytest.raises(DiracError, match=r"^--size must be at least 1 byte, got '0'$"):
        parse_size("0")
    with pytest.raises(DiracError, match="--size is too large"):  # float() of 400 digits is infinite
        parse_size("9" * 400 + "KB")
    with pytest.raises(DiracError, match=r"at least 1 byte, got '0.5' \(whole bytes\)$"):
        parse_size("0.5")


@pytest.mark.slow
def test_the_cli_takes_a_size(tmp_path, sample_image):
    sample_image.save(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["encode", str(tmp_path / "a.png"), "--size", "10KB",
                                       "-o", str(tmp_path / "a.drc")])
    assert result.exit_code == 0, result.output
    assert 9_700 <= (tmp_path / "a.drc").stat().st_size <= 10_000
    both = CliRunner().invoke(main, ["encode", str(tmp_path / "a.png"), "-q", "3", "--size", "10KB",
                                     "-o", str(tmp_path / "b.drc")])
    assert both.exit_code == 2 and "exactly one of -q, --size or --bpp" in both.output


@pytest.mark.slow
def test_calls_from_four_threads_give_the_bytes_and_pixels_of_serial_calls(small_image, sample_image):
    images = [small_image, sample_image.crop((0, 0, 200, 120)), small_image.convert("L"),
              sample_image.crop((100, 50, 260, 210))]
    jobs = [(image, level) for image in images for level in (2, 5)]

    def round_trip(job: tuple) -> tuple[str, str]:
        # the exact mode switches oneDNN off process-wide while it runs: a fast decode beside
        # it must not see that
        image, level = job
        data = diraccodec.encode(image, level)
        pixels = np.asarray(diraccodec.decode(data, steps=2 if level == 2 else 0, exact=level == 5))
        return hashlib.sha256(data).hexdigest(), hashlib.sha256(pixels.tobytes()).hexdigest()

    serial = [round_trip(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(round_trip, jobs))
    assert concurrent == serial


def test_the_latent_stream_splits_into_hyper_latents_and_latents(small_image, tmp_path):
    from diraccodec import api, modelfiles
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.errors import WrongWeightsError

    shares, version_2 = [], (DATA / "parrots-v2.drc").read_bytes()
    for data in (diraccodec.encode(small_image, 0), diraccodec.encode(small_image, 6), version_2):
        split = api.stream_bytes(data)
        assert split.total == len(diraccodec.inspect(data).header.sections[b"LATS"])
        assert 0 <= split.total - (split.hyper_latents + split.latents) <= 8  # the coder's last words
        shares.append(split.hyper_latents / split.total)
    assert shares[0] > shares[1] > 0  # the side information weighs most in the smallest files
    other = tmp_path / "other.safetensors"
    modelfiles.export_base_weights(MultiRateHyperprior(HyperpriorConfig(8, 8)), other, {"purpose": "test"})
    with pytest.raises(WrongWeightsError, match="file was made with weights"):
        api.stream_bytes(version_2, weights=other)


def test_decode_reports_its_progress_and_gives_the_same_pixels(small_image):
    data = diraccodec.encode(small_image, 2, effort=1)
    for steps in (0, 3):
        heard: list[tuple[int, int]] = []
        decoded = diraccodec.decode(data, steps, progress=lambda done, total, heard=heard: heard.append((done, total)))
        assert heard == [(done, steps + 1) for done in range(steps + 2)]  # start, base, each step
        assert decoded.tobytes() == diraccodec.decode(data, steps).tobytes()


def test_images_opened_from_several_threads_leave_pillow_s_own_limit_as_it_was(small_image):
    from PIL import Image

    from diraccodec.image.planes import open_image

    data, before = saved_as(small_image), Image.MAX_IMAGE_PIXELS

    def open_many(limit: int) -> None:
        for _ in range(200):
            assert open_image(data, limit).size == small_image.size

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(open_many, [10**6, 10**9, 10**7, 10**8]))
    assert before == Image.MAX_IMAGE_PIXELS  # what Pillow had before the calls


def test_the_api_says_which_installed_models_serve_a_files_weights(small_image):
    """What `dirac info` prints comes from the API: the shipped weights serve their own files
    with 20-step diffusion and the filter, and nothing serves files of other base weights."""
    from diraccodec import api

    shipped = diraccodec.inspect(diraccodec.encode(small_image, 3)).header.weights_id
    assert api.serving_weights_id(shipped) == shipped
    diffusion, restoration = api.diffusion_support(shipped), api.restoration_support(shipped)
    assert diffusion.weights is not None and diffusion.weights.name == "diffusion.safetensors"
    assert diffusion.full_steps == 20 and diffusion.why_not == ""
    assert restoration.weights is not None and restoration.weights.name == "restoration.safetensors"
    assert api.serving_weights_id(shipped.hex()) == shipped  # as the Pillow plugin's info gives it
    assert api.diffusion_support(shipped.hex()) == diffusion and api.restoration_support(shipped.hex()) == restoration
    for bad in ("xyz", shipped.hex()[:-2], 7, shipped + b"\x00"):
        with pytest.raises(InvalidOptionError, match="weights id"):
            api.restoration_support(bad)
    other = bytes(8)
    assert api.serving_weights_id(other) == other
    unserved = api.diffusion_support(other)
    assert unserved.weights is None
    assert unserved.why_not == "not available: diffusion.safetensors was trained on other base weights"
    assert api.restoration_support(other).why_not == "none: 0 steps give the base synthesis alone"


def test_every_readable_format_version_has_its_stream_rules():
    """A version the container accepts but the decoder has no rules for would end in a KeyError."""
    from diraccodec import api
    from diraccodec.container import drc

    assert set(api.STREAM_RULES) == set(drc.READABLE_VERSIONS)


def test_a_size_target_climbs_past_the_window_where_the_search_makes_room():
    """The searched files are looked for near the plain answer first; where the search frees
    more room than that window, the bisection goes on upwards to the highest level that fits."""
    from types import SimpleNamespace

    from diraccodec import api

    def file(level: float, searched: bool = True) -> bytes:  # sizes grow with the level; the search halves them
        return bytes(round((level + 2) * 1000 * (0.5 if searched else 1.0)))

    tried = []

    def counted(level: float, searched: bool = True) -> bytes:
        tried.append((level, searched))
        return file(level, searched)

    encoder = SimpleNamespace(file=counted, search=SimpleNamespace(passes=1, progress=None), map_ends_at=lambda: None)
    data = api.encode_to_size(encoder, 5_000, num_levels=8)
    assert len(data) == 5_000  # level 8: (8 + 2) * 1000 / 2, where plain rounding fits only level 3
    assert len(tried) == len(set(tried))  # no level encoded twice
    plain = SimpleNamespace(file=file, search=SimpleNamespace(passes=0, progress=None), map_ends_at=lambda: None)
    assert api.encode_to_size(plain, 5_000, 8) == file(3, False)


FLOAT64_DEFAULT = """
import hashlib, torch, numpy as np, diraccodec
from PIL import Image
image = Image.open("samples/parrots.png").convert("RGB").crop((150, 60, 246, 140))
def outputs():
    data = diraccodec.encode(image, 2, effort=2)
    pixels = [np.asarray(diraccodec.decode(data, steps)).tobytes() for steps in (0, 2)]
    return hashlib.sha256(data + b"".join(pixels)).hexdigest()
torch.set_default_dtype(torch.float64)  # before the first call: the models load under it
under_float64 = outputs()
assert torch.get_default_dtype() == torch.float64
torch.set_default_dtype(torch.float32)
assert outputs() == under_float64
"""


def test_a_caller_s_float64_default_dtype_changes_nothing_and_stays():
    """A program that set torch's default dtype to float64 gets the same file and pixels, and
    keeps its default; the models were built under it and cached, and every later call failed."""
    result = subprocess.run([sys.executable, "-c", FLOAT64_DEFAULT], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("image_format", ["TIFF", "GIF", "PNG"])
def test_a_caller_s_lower_pillow_limit_does_not_refuse_an_image_within_max_pixels(small_image, monkeypatch,
                                                                                    image_format):
    """Pillow checks its limit again as it counts a file's frames and loads its pixels (TIFF,
    GIF): the codec's own limit holds there too, and the caller's is back afterwards."""

    from PIL import Image

    image_data = saved_as(small_image, image_format)
    pixels = small_image.width * small_image.height
    callers_limit = pixels // 4
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", callers_limit)
    data = diraccodec.encode(image_data, 1, effort=1, max_pixels=pixels)
    limit_after = Image.MAX_IMAGE_PIXELS
    assert diraccodec.inspect(data).header.pixels == pixels and limit_after == callers_limit


# A caller's process as a pipeline runs it: seeded random numbers, then the codec's first use
# (its models built), then a fork-started pool whose workers decode
CALLER_SCRIPT = """
import multiprocessing, sys, numpy as np, torch, diraccodec
from PIL import Image
def decoded(data):
    return np.asarray(diraccodec.decode(data, steps=1)).tobytes()
if __name__ == "__main__":
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    torch.manual_seed(7); expected = torch.rand(4)
    torch.manual_seed(7); data = diraccodec.encode(image, 2, effort=1); pixels = decoded(data)
    print("random numbers kept:", torch.equal(torch.rand(4), expected))
    with multiprocessing.get_context("fork").Pool(1) as pool:
        print("forked worker decodes:", pool.apply_async(decoded, (data,)).get(timeout=60) == pixels)
"""


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="forks its workers")
def test_the_codec_leaves_a_callers_random_numbers_and_forked_workers_as_they_were(tmp_path):
    """Building a model draws initial weights from torch's global generator, and a process
    forked once torch's OpenMP threads ran waits for them forever at its first parallel kernel."""
    result = subprocess.run([sys.executable, "-c", CALLER_SCRIPT], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.stdout.splitlines() == ["random numbers kept: True", "forked worker decodes: True"], \
        result.stdout + result.stderr[-2000:]


def test_a_callers_autocast_changes_neither_files_nor_pixels(small_image):
    import torch

    data = diraccodec.encode(small_image, 2, effort=1)
    pixels = {steps: np.asarray(diraccodec.decode(data, steps=steps, exact=True)) for steps in (0, 1)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert diraccodec.encode(small_image, 2, effort=1) == data
        for steps, expected in pixels.items():
            assert np.array_equal(np.asarray(diraccodec.decode(data, steps=steps, exact=True)), expected)


def test_a_path_is_named_by_itself_in_errors_and_an_empty_one_is_refused(tmp_path):
    """A label names data, which has no name of its own: a missing file was called by the
    label, and an empty path was "no such file " with nothing after it."""
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageReadError, match=f"^cannot read image: no such file {missing}$"):
        diraccodec.encode(str(missing), 3, label="holiday photo")
    with pytest.raises(InvalidOptionError, match=r"^the image path is empty$"):
        diraccodec.encode("", 3)


def test_a_callers_inference_mode_changes_neither_files_nor_pixels(small_image):
    """The encoder's search takes gradients, which torch.enable_grad alone does not allow under
    inference mode: the default effort failed there with a traceback."""
    import torch

    data = diraccodec.encode(small_image, 2)
    pixels = np.asarray(diraccodec.decode(data, steps=1))
    with torch.inference_mode():
        assert diraccodec.encode(small_image, 2) == data
        assert np.array_equal(np.asarray(diraccodec.decode(data, steps=1)), pixels)
        assert torch.is_inference_mode_enabled()  # the caller's, as it was


def test_inputs_that_cannot_be_read_are_refused_by_name(tmp_path, small_image):
    """A closed file object or buffer, one open for writing, a released memoryview: an
    InvalidOptionError that says why, not Python's ValueError from deep inside."""
    small_image.save(tmp_path / "a.png")
    closed = open(tmp_path / "a.png", "rb")  # noqa: SIM115
    closed.close()
    buffer = io.BytesIO((tmp_path / "a.png").read_bytes())
    buffer.close()
    with open(tmp_path / "b.png", "wb") as writing:
        for image, reason in ((closed, "I/O operation on closed file"), (buffer, "I/O operation on closed file"),
                              (writing, "it is not open for reading")):
            with pytest.raises(InvalidOptionError, match=rf"^cannot read the image file object: {reason}"):
                diraccodec.encode(image, 2)
    released = memoryview(diraccodec.encode(small_image, 2, effort=1))
    released.release()
    for call in (diraccodec.decode, diraccodec.inspect, lambda data: diraccodec.encode(data, 2)):
        with pytest.raises(InvalidOptionError, match=r"^cannot read the memoryview: operation forbidden on released"):
            call(released)
    with pytest.raises(InvalidOptionError, match=r"^weights must be a path or None, got 5"):
        diraccodec.api.stream_bytes(diraccodec.encode(small_image, 2, effort=1), weights=5)


def test_text_given_as_a_file_or_path_is_not_echoed_and_a_file_opened_for_a_refusal_is_closed(tmp_path, small_image):
    import gc
    import warnings

    with pytest.raises(InvalidOptionError, match=r"^a \.drc file must be given as bytes, got str of 100000 "
                                                 r"characters$"):
        diraccodec.decode("x" * 100_000)
    with pytest.raises(InvalidOptionError, match=r"^an image path is at most 4096 characters, got str of 100000 "):
        diraccodec.encode("x" * 100_000, 2)
    (tmp_path / "a.drc").write_bytes(diraccodec.encode(small_image, 2, effort=1))
    small_image.save(tmp_path / "a.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path, options, refusal in (
                (tmp_path / "a.drc", {}, r"a\.drc is a \.drc file already: decode it"),
                (tmp_path / "a.png", {"max_pixels": 10}, r"a\.png of 96x80 exceeds the limit of 10 pixels$")):
            with pytest.raises(DiracError, match=refusal):  # refused once the file is open
                diraccodec.encode(path, 2, **options)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


class _Started(Exception):
    pass


def test_a_file_may_recommend_up_to_100_steps_and_decode_then_runs_them(small_image):
    """encode(steps=N) writes the recommendation, and decode without steps takes it; 100, the
    most a decoder runs, is allowed both ways (the decode is stopped as it begins)."""
    for steps in (0, 7, 100):
        data = diraccodec.encode(small_image, 1, effort=1, steps=steps)
        assert diraccodec.inspect(data).recommended_steps == steps
        totals = []

        def stop_at_the_start(done, total, totals=totals):
            totals.append(total)
            raise _Started

        with pytest.raises(_Started):
            diraccodec.decode(data, progress=stop_at_the_start)
        assert totals == [steps + 1]
    assert diraccodec.inspect(diraccodec.encode(small_image, 1, effort=1)).recommended_steps is None


def test_a_size_target_that_only_the_searched_file_meets_is_met(sample_image):
    """Where the searched file at the lowest level is smaller than the plain one, a target
    between the two is met by the search, not refused as below the smallest file."""
    corner = sample_image.crop((0, 0, 128, 128))
    lowest = (-1, 3)  # the first level of the runs with and without the detail map
    plain = min(len(diraccodec.encode(corner, level, effort=1)) for level in lowest)
    searched = min(len(diraccodec.encode(corner, level, effort=2)) for level in lowest)
    assert searched < plain  # what the test needs of this image
    assert len(diraccodec.encode(corner, size=searched, effort=2)) <= searched
    with pytest.raises(InvalidOptionError, match="is below the smallest file"):
        diraccodec.encode(corner, size=searched, effort=1)
