"""The local batch's planning: every input has its own output, or fails with the reason."""

from __future__ import annotations

from diraccodec.batch import BatchSettings, plan_jobs, run_batch


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
