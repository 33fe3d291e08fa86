"""The local batch: every input has its own output, or fails with the reason; a worker that
dies fails its own file alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diraccodec.batch import BatchSettings, Job, JobResult, local, plan_jobs, run_batch, run_job


def test_two_inputs_with_one_output_convert_once_and_fail_once(tmp_path, small_image):
    source, destination = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    small_image.save(source / "photo.png")
    small_image.save(source / "photo.jpg", quality=95)
    small_image.save(source / "other.png")
    settings = BatchSettings(quality=3)
    jobs = plan_jobs(source, destination, settings)
    assert sorted(str(job.target) for job in jobs).count(str(destination / "photo.drc")) == 2
    results = {str(r.job.source): r for r in run_batch(jobs, settings, workers=1, on_result=lambda result: None)}
    assert results[str(source / "photo.jpg")].status == "converted"  # the first in name order
    failed = results[str(source / "photo.png")]
    assert failed.status == "failed" and "same output as" in failed.message and "photo.jpg" in failed.message
    assert results[str(source / "other.png")].status == "converted"
    assert sorted(p.name for p in destination.iterdir()) == ["other.drc", "photo.drc"]


def test_hidden_files_and_folders_are_left_alone(tmp_path, small_image):
    source = tmp_path / "in"
    for folder in ("", ".thumbnails", "album", "album/.cache"):
        (source / folder).mkdir(parents=True, exist_ok=True)
    for name in ("photo.png", ".hidden.png", ".thumbnails/photo.png", "album/two.png", "album/.cache/two.png",
                 "album/notes.txt"):
        small_image.save(source / name, format="PNG")
    jobs = plan_jobs(source, tmp_path / "out", BatchSettings())
    assert sorted(str(job.source.relative_to(source)) for job in jobs) == ["album/two.png", "photo.png"]


def test_an_encode_checks_its_file_against_the_batch_pixel_limit_not_the_default(tmp_path, small_image,
                                                                                  monkeypatch):
    from diraccodec import api

    monkeypatch.setattr(api.inspect, "__defaults__", (small_image.width * small_image.height - 1,))
    source = tmp_path / "in"
    source.mkdir()
    small_image.save(source / "photo.png")
    settings = BatchSettings(quality=1, effort=1, max_pixels=10**6)
    [result] = run_batch(plan_jobs(source, tmp_path / "out", settings), settings, workers=1,
                         on_result=lambda result: None)
    assert result.status == "converted", result.message


NAMES = ["a", "b", "c", "d", "e"]


@pytest.fixture
def five_photos(tmp_path, small_image) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    for name in NAMES:
        small_image.save(source / f"{name}.png")
    return source


def dies_on_b(job: Job, settings: BatchSettings) -> JobResult:
    """run_job, but the worker's process ends on the file named b, as one the kernel kills for memory would."""
    if Path(job.source).stem == "b":
        os._exit(1)
    return run_job(job, settings)


@pytest.mark.parametrize("workers", [2, 4])
def test_a_dying_worker_fails_its_file_alone(tmp_path, five_photos, monkeypatch, workers):
    source, destination = five_photos, tmp_path / "out"
    monkeypatch.setattr(local, "run_job", dies_on_b)  # sent to the workers by name: they call it too
    settings = BatchSettings(quality=1, effort=1)
    results = run_batch(plan_jobs(source, destination, settings), settings, workers, on_result=lambda result: None)
    outcomes = {Path(r.job.source).stem: (r.status, r.message) for r in results}
    assert sorted(outcomes) == NAMES and len(results) == len(NAMES)
    assert outcomes.pop("b") == ("failed", local.WORKER_DIED)
    assert all(status == "converted" for status, _ in outcomes.values()), outcomes
    assert sorted(p.stem for p in destination.iterdir()) == ["a", "c", "d", "e"]


def test_a_pool_found_broken_at_a_submit_loses_no_file(tmp_path, five_photos, monkeypatch):
    """A worker may die between two submits: the submit then raises, and the file goes to a fresh pool."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    submits = []

    class BreaksOnThirdSubmit(ProcessPoolExecutor):
        def submit(self, *arguments, **options):
            submits.append(arguments[1])
            if len(submits) == 3:
                raise BrokenProcessPool("a worker died")
            return super().submit(*arguments, **options)

    source, destination = five_photos, tmp_path / "out"
    monkeypatch.setattr(local, "ProcessPoolExecutor", BreaksOnThirdSubmit)
    settings = BatchSettings(quality=1, effort=1)
    results = run_batch(plan_jobs(source, destination, settings), settings, 2, on_result=lambda result: None)
    assert sorted(Path(r.job.source).stem for r in results) == NAMES
    assert all(r.status == "converted" for r in results), [(r.job.source, r.message) for r in results]
    assert Path(submits[2].source).stem == Path(submits[3].source).stem == "c"  # tried again, in a new pool
