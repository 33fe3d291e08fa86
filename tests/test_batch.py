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
