"""The evaluation report's figures: BD-rates between curves, runs pooled, JSON and Markdown."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from pathlib import Path

import pytest

from diraccodec.evaluation.report import (
    bd_rates,
    markdown_table,
    report_again,
    report_of,
    shell_words,
    write_json,
)
from diraccodec.evaluation.run import Point

RATES = (0.1, 0.2, 0.4, 0.8)


def curve(codec: str, scale: float, **fields: float) -> list[Point]:
    """Four points at RATES times `scale`, the same qualities for every codec."""
    return [Point(codec, float(index), rate * scale, 25.0 + index, 0.9, 0.5 - index / 20, 1.0, 1.0, 2, **fields)
            for index, rate in enumerate(RATES, 1)]


def test_a_report_gives_the_bd_rate_of_ours_against_each_reference():
    """Ours at half a reference's bits for the same PSNR and LPIPS is -50%, not +100%."""
    points = [*curve("AVIF", 1.0), *curve("diraccodec", 0.5)]
    for metric in ("psnr", "lpips"):
        assert bd_rates(points, metric) == {"diraccodec": {"AVIF": pytest.approx(-50.0, abs=1e-6)}}


def test_an_encoder_effort_is_measured_against_the_default_effort_too():
    """`dirac eval --effort 2,3` reports what effort 3 saves over the default, beside the references."""
    points = [*curve("AVIF", 1.0), *curve("diraccodec", 0.5), *curve("diraccodec effort 3", 0.45)]
    rates = bd_rates(points, "psnr")
    assert rates["diraccodec"] == {"AVIF": pytest.approx(-50.0)}
    assert rates["diraccodec effort 3"] == {"AVIF": pytest.approx(-55.0), "diraccodec": pytest.approx(-10.0)}


def saved(tmp_path: Path, name: str, points: list[Point], complete: bool = True, data_id: str | None = "ab12") -> Path:
    path = tmp_path / name
    write_json(report_of(points, "kodak", complete, f"dirac eval {name}", machine="here", data_id=data_id), path)
    return path


def test_pooled_runs_are_complete_only_where_every_run_was(tmp_path: Path):
    first = saved(tmp_path, "first.json", curve("diraccodec", 1.0), complete=False)
    second = saved(tmp_path, "second.json", curve("diraccodec", 1.0)[:2])
    assert report_again(first, [second], tmp_path / "pooled.json")["complete"] is False
    assert report_again(second, [saved(tmp_path, "third.json", curve("diraccodec", 1.0))],
                        tmp_path / "pooled.json")["complete"] is True


def test_pooled_runs_keep_the_images_fingerprint_only_where_every_run_had_it(tmp_path: Path):
    """A run that recorded no fingerprint was never checked against the others' images."""
    older = saved(tmp_path, "older.json", curve("diraccodec", 1.0), data_id=None)
    newer = saved(tmp_path, "newer.json", curve("diraccodec", 1.0))
    assert "data_id" not in report_again(older, [newer], tmp_path / "pooled.json")
    assert report_again(newer, [newer], tmp_path / "again.json")["data_id"] == "ab12"


def test_a_figure_that_could_not_be_measured_is_null_in_the_json(tmp_path: Path):
    """NaN is no JSON: strict readers (browsers, jq) refuse a file holding it."""
    points = curve("diraccodec", 1.0)
    points[0].lpips = math.nan
    text = saved(tmp_path, "report.json", points).read_text()
    assert "NaN" not in text
    assert json.loads(text)["points"][0]["lpips"] is None


def test_the_markdown_table_gives_the_encode_time_in_its_column(tmp_path: Path):
    report = report_of(curve("diraccodec", 1.0, encode_seconds_per_mp=0.25), "kodak", True, "dirac eval",
                       machine="here")
    row = markdown_table(report).splitlines()[6].split("|")
    assert [cell.strip() for cell in row[9:11]] == ["1.00", "0.25"]  # enc+dec s/MP, then enc s/MP


def test_the_json_keeps_seven_significant_digits_of_each_figure(tmp_path: Path):
    """Far beyond what the measurements resolve, and no float's 17 digits of noise."""
    points = curve("diraccodec", 1.0)
    points[0].bpp, points[0].psnr, points[0].lpips = 0.123456789, 31.23456789, 1.23456789e-5
    text = saved(tmp_path, "report.json", points).read_text()
    written = json.loads(text)["points"][0]
    assert (written["bpp"], written["psnr"], written["lpips"]) == (0.1234568, 31.23457, 1.234568e-05)


def test_the_plot_shows_our_curves_at_0_steps_and_at_the_most_steps_up_to_20(tmp_path: Path, monkeypatch):
    """Of the step counts measured (4, 20 and 50 here), the plot keeps it readable: the base
    decode, and the diffusion decoder at its largest count of 20 or fewer."""
    from diraccodec.evaluation import report

    shown: list[list[str]] = []
    monkeypatch.setattr(report, "save_figure",
                        lambda figure, path: shown.extend([line.get_label() for line in ax.get_lines()]
                                                          for ax in figure.axes))
    points = [*curve("AVIF", 1.0), *curve("diraccodec", 0.5)]
    for steps in (4, 20, 50):
        points += [dataclasses.replace(point, codec=f"diraccodec ({steps} steps)", steps=steps)
                   for point in curve("diraccodec", 0.5)]
    report.plot(points, tmp_path / "rd.png", "rate-distortion")
    assert shown == [["AVIF", "diraccodec", "diraccodec (20 steps)"]] * 3  # PSNR, MS-SSIM and LPIPS


def test_a_recorded_command_reads_back_as_its_words_in_the_systems_shell():
    """Reports and bench record the command that made them, to be run again: with POSIX
    quoting a Windows console would split 'my photos' at its space."""
    words = ["dirac", "eval", "--data", "my photos", "--json", "it's.json"]
    posix = shell_words(words, windows=False)
    assert shlex.split(posix) == words and posix.startswith("dirac eval --data 'my photos'")
    assert shell_words(words, windows=True) == 'dirac eval --data "my photos" --json it\'s.json'
