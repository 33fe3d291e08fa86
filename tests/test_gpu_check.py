"""The GPU check script runs end to end (on the CPU here: the device under test is a parameter)."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, load_script


@pytest.mark.slow
def test_gpu_check_runs_and_reports(tmp_path, small_image):
    data = tmp_path / "images"
    data.mkdir()
    small_image.save(data / "a.png")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--data", str(data), "--device", "cpu",
                             "--images", "1", "--cross-images", "1", "--large-megapixels", "0.02",
                             "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    speed = report.pop("speed")
    assert speed.pop("images") == 1 and set(speed) == {"encode", "decode 0 steps", "decode 20 steps"}
    assert all(value > 0 for value in speed.values()) and report["left out"] == []
    cross = report["cross device"][0]
    assert report["conformant"] and cross["symbols identical"] and cross["entropy parameters identical"]
    assert report["failed"] == {} and {row["decoded on"] for row in report["cross device"] if "steps" in row} == {
        "cpu", "cpu (fast)"}  # the device under test and the CPU's fast mode, each against the exact mode
    assert report["cross device"][-1]["repeat on the device identical"] is True  # a CPU repeats its files
    assert {name: report["profile"][name]["seconds"] > 0 for name in report["profile"]} == {
        "encode": True, "decode 20 steps": True}
    assert "decode 20 steps: Python's profiler" in (out / "gpu-profile.txt").read_text()
    (row,) = report["large"]  # up to 12 MP: one decode, at 20 steps
    assert row["size"] == "162x122" and row["steps"] == 20 and row["decode seconds"] > 0
    assert (out / "gpu-check.md").read_text().startswith("Command: `python scripts/gpu_check.py")


def test_gpu_check_names_what_its_time_limit_left_out(tmp_path, small_image):
    """A budget already spent begins nothing, yet the report is written and says what is missing,
    and conformance that was never checked is not claimed."""
    data = tmp_path / "images"
    data.mkdir()
    small_image.save(data / "a.png")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--data", str(data), "--device", "cpu",
                             "--minutes", "0", "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["speed"] == {"encode": None, "decode 0 steps": None, "decode 20 steps": None, "images": 0}
    assert report["conformant"] is None and report["cross device"] == [] and report["large"] == []
    assert report["left out"] == ["speed after 0 of 2", "profile", "cross-device images after 0 of 1",
                                  "12 MP photo", "50 MP photo"]
    assert "## Left out by the time limit" in (out / "gpu-check.md").read_text()


def test_a_device_the_check_does_not_compare_by_name_is_refused(tmp_path):
    """`cuda:1` went through as a CPU: no waits before the clock was read, no GPU memory, no CUDA graphs."""
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--data", str(tmp_path), "--device", "cuda:1",
                             "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "argument --device: invalid choice: 'cuda:1'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, small_image, monkeypatch):
    gpu_check = load_script("gpu_check")
    data = tmp_path / "images"
    data.mkdir()
    small_image.crop((0, 0, 64, 48)).save(data / "a.png")

    def out_of_memory(*arguments):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")

    monkeypatch.setattr(gpu_check, "where_time_goes", out_of_memory)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--data", str(data), "--device", "cpu", "--images", "1",
                                      "--cross-images", "1", "--large-megapixels", "--output", str(tmp_path / "out")])
    assert gpu_check.main() == 3  # no conformance failure, but a section failed
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["failed"] == {"profile": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert report["conformant"] is True and report["speed"]["images"] == 1  # the sections around it ran
    assert "## Sections that failed" in (tmp_path / "out" / "gpu-check.md").read_text()


def test_kernel_launches_are_counted_in_every_form_the_profiler_names():
    from diraccodec.compute import profile_totals

    def event(key: str, count: int) -> SimpleNamespace:
        return SimpleNamespace(key=key, count=count, self_cpu_time_total=1.0, self_device_time_total=0.0,
                               device_type=None, is_user_annotation=False)

    names = {"cudaLaunchKernel": 3, "cudaLaunchKernelExC": 4, "cuLaunchKernel": 5, "cuLaunchKernelEx": 6,
             "cudaGraphLaunch": 7, "aten::conv2d": 100, "cudaMemcpyAsync": 100}
    assert profile_totals([event(key, count) for key, count in names.items()])["kernel launches"] == 25
