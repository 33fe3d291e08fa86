"""The GPU check script runs end to end (on the CPU here: the device under test is a parameter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


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
