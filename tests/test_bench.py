"""`dirac bench`: every stage timed on every image, beside a reference codec, in one table."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from diraccodec.api import get_codec
from diraccodec.bench import STAGES
from diraccodec.cli import main


def test_bench_times_every_stage_and_a_reference(tmp_path, small_image, sample_image):
    folder = tmp_path / "images"
    folder.mkdir()
    small_image.save(folder / "a.png")
    sample_image.crop((0, 0, 160, 96)).save(folder / "b.png")
    report_path, markdown = tmp_path / "bench.json", tmp_path / "bench.md"
    result = CliRunner().invoke(main, ["bench", str(folder), "-q", "3", "--references", "avif", "--steps", "2",
                                       "--json", str(report_path), "--markdown", str(markdown)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["images"] == 2 and sorted(report["per_image"]) == ["a.png", "b.png"]
    assert report["models"]["base"] == get_codec().weights.weights_id.hex()  # the weights timed
    for stage, _ in STAGES:
        values = report["summary"][stage]
        assert 0 <= values["min"] <= values["median"] <= values["max"], stage
    # a step is a difference of two timings, which noise on a loaded machine can cancel
    assert all(report["summary"][stage]["min"] > 0 for stage, _ in STAGES if stage != "diffusion step")
    for figure in ("decode 2 steps", "avif encode", "avif decode", "avif bpp", "bpp"):
        assert report["summary"][figure]["median"] > 0, figure
    assert "| diffusion step |" in markdown.read_text() and "s/MP" in result.output


def test_bench_refuses_unknown_references(tmp_path, small_image):
    small_image.save(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "a.png"), "--references", "bmp"])
    assert result.exit_code == 2 and "unknown reference codec 'bmp'" in result.output


def test_bench_with_steps_and_no_diffusion_weights_fails_before_any_timing(tmp_path, small_image, monkeypatch):
    from diraccodec import bench

    def no_timing(*arguments, **options):
        raise AssertionError("an image was timed")

    small_image.save(tmp_path / "a.png")
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(tmp_path / "none.safetensors"))
    monkeypatch.setattr(bench, "time_image", no_timing)
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "a.png"), "--steps", "2", "--references", "none"])
    assert result.exit_code == 2 and "no diffusion weights at" in result.output, result.output


def test_the_cpu_is_named_with_its_family_model_and_vector_instructions(tmp_path, monkeypatch):
    import torch

    from diraccodec import compute

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\ncpu family\t: 25\nmodel\t\t: 17\n\n"
                    "processor\t: 1\nmodel name\t: Another CPU\n")
    monkeypatch.setattr(compute, "CPU_INFO", str(info))
    compute.cpu_description.cache_clear()
    try:
        described = compute.cpu_description()
    finally:
        compute.cpu_description.cache_clear()
    assert described == f"Some CPU, family 25 model 17 ({torch.backends.cpu.get_cpu_capability()})"


def test_bench_times_the_stages_as_the_api_runs_them_whatever_the_callers_default_dtype(small_image, tmp_path):
    """bench runs the stages itself, inside the API's model_calls: under a caller's float64
    default dtype the models still run (they failed on a float64 input)."""
    import torch

    from diraccodec.bench import BenchOptions, time_image

    small_image.save(tmp_path / "a.png")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        figures = time_image(tmp_path / "a.png", BenchOptions(images=(tmp_path / "a.png",), references=(), steps=0))
    finally:
        torch.set_default_dtype(previous)
    assert figures["synthesis"] > 0 and figures["bpp"] > 0


def test_each_stage_is_the_fastest_of_its_repeats_per_megapixel_and_times_only_its_own_calls(
        small_image, tmp_path, monkeypatch):
    """A stage's figure is the shortest of `repeat` runs of its own calls, divided by the
    image's megapixels, and the diffusion step is (5 steps minus 1) / 4: each stage is charged
    a known time on a clock of the test's own (calls made inside another stage's are free), so
    the figures are exact, not timings."""
    from types import SimpleNamespace

    from diraccodec import api, bench

    now, depth = [0.0], [0]
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    results: dict[str, object] = {}

    def charge(owner: object, name: str, cost: Callable[..., float], multiples: tuple[float, ...] = (3, 1, 2)) -> None:
        """Replace owner.name by a call that advances the clock by cost(arguments) times the
        next of `multiples` (the runs of a stage differ, so the fastest is known)."""
        function, calls = getattr(owner, name), {}

        def charged(*arguments: object, **options: object) -> object:
            if depth[0] == 0:
                seconds = cost(*arguments, **options)
                index = calls[seconds] = calls.get(seconds, -1) + 1
                now[0] += seconds * multiples[index % len(multiples)]
            depth[0] += 1
            try:
                results[name] = function(*arguments, **options)
            finally:
                depth[0] -= 1
            return results[name]

        monkeypatch.setattr(owner, name, charged)

    codec = api.get_codec(None, api.compute_for("auto", False))
    restorer, diffusion = api.get_restorer(codec), api.get_diffusion(codec)
    assert restorer is not None  # the shipped weights restore and sample
    charge(bench, "image_to_planes", lambda *_, **__: 1.0, (9, 3, 1, 2))  # one untimed read for its warnings
    charge(codec, "analysis_latents", lambda *_: 2.0)
    charge(codec, "write_stream", lambda *_: 4.0)
    charge(api, "encode", lambda *_, **__: 8.0)
    charge(codec, "read_stream", lambda *_: 16.0)
    charge(codec, "synthesize", lambda *_: 32.0)
    charge(restorer, "restore", lambda *_: 64.0)
    charge(api, "decode", lambda _, steps, **__: 128.0 if steps == 0 else 256.0)
    charge(diffusion, "sample", lambda _, __, steps: 0.5 + 0.25 * (steps - 1))
    charge(bench, "encode_with_pillow", lambda *_, **__: 0.125)
    charge(bench, "decode_with_pillow", lambda *_: 0.0625)
    small_image.save(tmp_path / "a.png")
    options = bench.BenchOptions(images=(tmp_path / "a.png",), references=("jpeg",), steps=2, repeat=3)
    figures = bench.time_image(tmp_path / "a.png", options)
    megapixels = 96 * 80 / 1e6
    expected = {"load": 1.0, "analysis": 2.0, "entropy coding": 4.0, "encode": 8.0, "entropy decoding": 16.0,
                "synthesis": 32.0, "restoration": 64.0, "decode": 128.0, "diffusion step": 0.25,
                "decode 2 steps": 256.0, "jpeg encode": 0.125, "jpeg decode": 0.0625}
    expected = {stage: seconds / megapixels for stage, seconds in expected.items()}
    expected["bpp"] = 8 * len(results["encode"]) / (96 * 80)
    expected["jpeg bpp"] = 8 * len(results["encode_with_pillow"]) / (96 * 80)
    assert expected["bpp"] != expected["jpeg bpp"]
    assert figures == pytest.approx(expected, rel=1e-12)


def test_a_stage_on_a_gpu_is_timed_until_its_work_is_done(monkeypatch):
    """A call on CUDA returns while its kernels still run: each run is timed from an idle GPU
    (the work queued before it waited for) until the GPU has finished it."""
    from types import SimpleNamespace

    from diraccodec import bench

    now, events = [0.0], []
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def synchronize(device: torch.device) -> None:
        events.append(("wait", str(device)))
        now[0] += 5.0  # the queued work finishing

    def queue_work() -> str:
        events.append(("run", None))
        now[0] += 1.0
        return "result"

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    assert bench.fastest(2, queue_work, torch.device("cuda:0")) == (6.0, "result")
    assert events == [("wait", "cuda:0"), ("run", None), ("wait", "cuda:0")] * 2
    events.clear()
    assert bench.fastest(2, queue_work, torch.device("cpu")) == (1.0, "result") and ("run", None) in events
    assert all(kind == "run" for kind, _ in events)


def test_the_summary_is_each_figures_median_and_range_in_stage_order_after_a_warm_up(
        sample_image, tmp_path, monkeypatch):
    """The models are loaded (a decode at 0 and at 2 steps) before the first image is timed;
    each figure's summary is the median, least and greatest over the images, in the order the
    stages ran; the megapixels are those of every image, keyed apart where two share a name."""
    from diraccodec import api, bench

    events: list[tuple[str, object]] = []
    decode = api.decode

    def recorded_decode(data: bytes, steps: int = 0, **options: object) -> object:
        events.append(("decode", steps))
        return decode(data, steps, **options)

    sizes = {(96, 80): (1.0, 5.0, 0.5), (64, 48): (2.0, 3.0, 0.25), (40, 72): (9.0, 4.0, 1.0)}

    def scripted(path: Path, options: bench.BenchOptions) -> dict[str, float]:
        events.append(("time", path))
        load, synthesis, bpp = sizes[Image.open(path).size]
        return {"synthesis": synthesis, "load": load, "bpp": bpp}  # not in name order

    encode_with_pillow = bench.encode_with_pillow

    def recorded_reference(image: Image.Image, image_format: str, **settings: object) -> bytes:
        events.append(("reference", image_format))
        return encode_with_pillow(image, image_format, **settings)

    monkeypatch.setattr(api, "decode", recorded_decode)
    monkeypatch.setattr(bench, "time_image", scripted)
    monkeypatch.setattr(bench, "encode_with_pillow", recorded_reference)
    paths = [tmp_path / "one" / "x.png", tmp_path / "two" / "x.png", tmp_path / "y.png"]
    for path, size in zip(paths, sizes, strict=True):
        path.parent.mkdir(exist_ok=True)
        sample_image.crop((0, 0, *size)).save(path)
    report = bench.run_bench(bench.BenchOptions(images=tuple(paths), references=("jpeg",)),
                             Console(file=io.StringIO()))
    assert events == [("decode", 0), ("decode", 2), ("reference", "JPEG"), *(("time", path) for path in paths)]
    assert list(report["per_image"]) == [str(paths[0]), str(paths[1]), "y.png"]
    assert report["images"] == 3 and report["megapixels"] == pytest.approx((96 * 80 + 64 * 48 + 40 * 72) / 1e6)
    assert report["summary"] == {"synthesis": {"median": 4.0, "min": 3.0, "max": 5.0},
                                 "load": {"median": 2.0, "min": 1.0, "max": 9.0},
                                 "bpp": {"median": 0.5, "min": 0.25, "max": 1.0}}
    assert list(report["summary"]) == ["synthesis", "load", "bpp"]


def test_the_markdown_gives_median_min_and_max_in_the_columns_it_names():
    """Each row reads as its header does: median, then the least, then the greatest; bits per
    pixel with four digits, seconds with three."""
    from diraccodec.bench import markdown_of

    report = {"command": "dirac bench", "machine": {"device": "cpu"},
              "summary": {"load": {"median": 2.0, "min": 1.0, "max": 9.0},
                          "bpp": {"median": 0.5, "min": 0.25, "max": 1.0}}}
    lines = markdown_of(report).splitlines()
    assert lines[4:8] == ["| stage | s/MP median | min | max |", "|---|---|---|---|",
                          "| load | 2.000 | 1.000 | 9.000 |", "| bpp | 0.5000 | 0.2500 | 1.0000 |"]


def test_an_image_named_twice_is_timed_once(tmp_path, small_image):
    """`dirac bench photos/a.png photos` names a.png twice: timed twice under one key, the
    second copy's figures replaced the first's while the report counted both."""
    from diraccodec.bench import image_paths

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        small_image.save(folder / name)
    (tmp_path / "link.png").symlink_to(folder / "b.png")
    assert image_paths((folder / "a.png", folder, tmp_path / "link.png")) == [folder / "a.png", folder / "b.png"]
