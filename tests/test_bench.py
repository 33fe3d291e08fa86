"""`dirac bench`: every stage timed on every image, beside a reference codec, in one table."""

from __future__ import annotations

import json

from click.testing import CliRunner

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
