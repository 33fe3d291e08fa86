"""The local batch: every input has its own output, or fails with the reason; a worker that
dies fails its own file alone."""

from __future__ import annotations

import errno
import importlib.util
import multiprocessing
import os
import re
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
    (source / "sub").mkdir()
    small_image.save(source / "sub" / "other.png")
    (destination / "sub").symlink_to(".")  # sub/other.drc is other.drc: one output of two inputs
    later = {Path(job.source).relative_to(source).as_posix(): job for job in plan_jobs(source, destination, settings)}
    assert later["sub/other.png"].same_output_as == source / "other.png"


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
    # a file written just before b's worker died, its result not yet read, goes again and finds its output
    assert all(outcome in (("converted", ""), ("skipped", "output exists")) for outcome in outcomes.values()), outcomes
    assert sorted(p.name for p in destination.iterdir()) == ["a.drc", "c.drc", "d.drc", "e.drc"]


def stall_in_the_first_write_of_a(job: Job) -> None:
    """Make the first write of a's output stall before its rename, with a file beside the
    outputs that says so (not a .drc: no output of the batch's)."""
    import time

    from diraccodec.image import files

    writing = Path(job.target).parent / "a-is-being-written"
    if Path(job.source).stem == "a" and not writing.exists():
        files.os.fsync = lambda descriptor: (writing.touch(), time.sleep(60))  # this worker's os alone


def wait_for_a_to_stall(job: Job) -> None:
    import time

    writing, deadline = Path(job.target).parent / "a-is-being-written", time.monotonic() + 60
    while not writing.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def dies_on_b_while_a_is_written(job: Job, settings: BatchSettings) -> JobResult:
    """run_job, but the first write of a's output stalls before its rename, and the worker
    converting b ends while it does: the pool then stops a's worker in the middle of its write."""
    if Path(job.source).stem == "b":
        wait_for_a_to_stall(job)
        os._exit(1)
    stall_in_the_first_write_of_a(job)
    return run_job(job, settings)


def ends_without_its_cleanup(number: int, _frame: object) -> None:
    """A worker's end on SIGTERM as on Windows, where the pool's terminate runs no handler."""
    os._exit(128 + number)


@pytest.mark.parametrize("ends", ["with its handler", "as on Windows"])
def test_a_worker_stopped_mid_write_leaves_no_temporary_file(tmp_path, five_photos, monkeypatch, ends):
    """When a worker dies the pool stops the others, each perhaps mid-write: no temporary file
    of theirs stays beside the outputs (the worker removes its own; where it cannot, the batch
    does once it has ended), and their files go again whole."""
    source, destination = five_photos, tmp_path / "out"
    monkeypatch.setattr(local, "run_job", dies_on_b_while_a_is_written)
    if ends == "as on Windows":
        monkeypatch.setattr(local, "_end_mid_write", ends_without_its_cleanup)
    settings = BatchSettings(quality=1, effort=1)
    results = run_batch(plan_jobs(source, destination, settings), settings, 2, on_result=lambda result: None)
    outcomes = {Path(r.job.source).stem: r.status for r in results}
    assert outcomes == {"a": "converted", "b": "failed", "c": "converted", "d": "converted", "e": "converted"}
    assert sorted(p.name for p in destination.iterdir()) == ["a-is-being-written", "a.drc", "c.drc", "d.drc",
                                                            "e.drc"]


def waits_for_a_to_stall_in_its_write(job: Job, settings: BatchSettings) -> JobResult:
    """run_job, but a's write stalls before its rename, and b is converted once it does."""
    if Path(job.source).stem == "b":
        wait_for_a_to_stall(job)
    stall_in_the_first_write_of_a(job)
    return run_job(job, settings)


def test_a_batch_stopped_as_on_windows_leaves_no_temporary_file(tmp_path, five_photos, monkeypatch):
    """Ctrl-C while a worker writes: the batch removes the file it was writing once it has
    ended, where no handler of its own ran."""
    import time

    def interrupted_by_b(result: JobResult) -> None:
        if Path(result.job.source).stem == "b":
            raise KeyboardInterrupt

    monkeypatch.setattr(local, "run_job", waits_for_a_to_stall_in_its_write)
    monkeypatch.setattr(local, "_end_mid_write", ends_without_its_cleanup)
    settings, destination = BatchSettings(quality=1, effort=1), tmp_path / "out"
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_batch(plan_jobs(five_photos, destination, settings), settings, 2, on_result=interrupted_by_b)
    assert time.monotonic() - started < 30  # a's worker was stopped, not waited for
    assert sorted(p.name for p in destination.iterdir()) == ["a-is-being-written", "b.drc"]


def killed_in_its_first_write_of_a(job: Job, settings: BatchSettings) -> JobResult:
    """run_job, but the worker writing a's output the first time is killed before the rename,
    as the kernel kills one for memory: its temporary file is there, and no code of its runs."""
    import signal

    from diraccodec.image import files

    first = Path(job.target).parent.parent / "a-was-killed"  # beside the batch's folders
    if Path(job.source).stem == "a" and not first.exists():
        first.touch()
        files.os.fsync = lambda descriptor: os.kill(os.getpid(), signal.SIGKILL)  # this worker's os alone
    return run_job(job, settings)


@pytest.mark.parametrize("workers", [2, 3])
def test_a_worker_killed_mid_write_leaves_no_temporary_file(tmp_path, five_photos, monkeypatch, workers):
    source, destination = five_photos, tmp_path / "out"
    monkeypatch.setattr(local, "run_job", killed_in_its_first_write_of_a)
    settings = BatchSettings(quality=1, effort=1)
    results = run_batch(plan_jobs(source, destination, settings), settings, workers, on_result=lambda result: None)
    outcomes = {Path(r.job.source).stem: (r.status, r.message) for r in results}
    assert sorted(outcomes) == NAMES and len(results) == len(NAMES) and outcomes.pop("a") == ("converted", "")
    # a file written just before a's worker died, its result not yet read, goes again and finds its output
    assert all(outcome in (("converted", ""), ("skipped", "output exists")) for outcome in outcomes.values()), outcomes
    assert (tmp_path / "a-was-killed").exists()  # a's first worker was killed
    assert sorted(p.name for p in destination.iterdir()) == [f"{name}.drc" for name in NAMES]


def test_only_the_ended_workers_temporary_files_are_removed(tmp_path):
    """Another writer's temporary file for the same output, a file of the same look beside
    another output, and names that merely start alike stay."""
    from diraccodec.image import files

    output = tmp_path / "a [1].drc"
    left = [tmp_path / f".a [1].drc.{writer}-{'0123456789ab'}.part" for writer in (41, 42)]
    kept = [*left[1:], tmp_path / ".a [1].drc.41-0123456789ab.part.x", tmp_path / ".a [1].drc.41-0123.part",
            tmp_path / ".b.drc.41-0123456789ab.part", tmp_path / ".a [1].drc.411-0123456789ab.part"]
    for path in [*left, *kept]:
        path.touch()
    files.remove_left_by({41, 7}, [output, tmp_path / "missing" / "c.drc"])
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def sleeps_long(job: Job, settings: BatchSettings) -> JobResult:
    import time

    time.sleep(30)
    return run_job(job, settings)


def test_ctrl_c_as_a_submit_starts_the_workers_stops_them_at_once(tmp_path, five_photos, monkeypatch):
    """Ctrl-C during a submit waits for its end (the workers it forks are then known), and a
    worker stopped before it set its own handlers stops: it kept the batch's, which only held
    the signal, and went on with its file while the batch waited."""
    import signal
    import time
    from concurrent.futures import ProcessPoolExecutor

    set_up = local._init_worker

    def slow_start() -> None:
        time.sleep(1)
        set_up()

    class InterruptedInItsFirstSubmit(ProcessPoolExecutor):
        def submit(self, *arguments, **options):
            future = super().submit(*arguments, **options)
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, held until the submit returns
            return future

    monkeypatch.setattr(local, "_init_worker", slow_start)
    monkeypatch.setattr(local, "run_job", sleeps_long)
    monkeypatch.setattr(local, "ProcessPoolExecutor", InterruptedInItsFirstSubmit)
    settings = BatchSettings(quality=1, effort=1)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_batch(plan_jobs(five_photos, tmp_path / "out", settings), settings, 2, on_result=lambda result: None)
    assert time.monotonic() - started < 10 and not multiprocessing.active_children()
    assert not (tmp_path / "out").exists()


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


def test_workers_on_cuda_start_fresh_and_convert_as_forked_ones_do(tmp_path, five_photos, monkeypatch):
    """A process forked from one that has used CUDA cannot use it, and the batch's own process
    has (it checks the options on the device): on CUDA the workers are spawned. A spawned pool
    (forced here on the CPU) converts every file, to the same bytes as the forked pool."""
    from concurrent.futures import ProcessPoolExecutor

    from diraccodec import compute

    monkeypatch.setattr(compute, "cuda_available", lambda: True)  # as on a machine with a GPU
    assert local.worker_start("auto").get_start_method() == local.worker_start("cuda").get_start_method() == "spawn"
    assert local.worker_start("cpu") is None
    monkeypatch.setattr(compute, "cuda_available", lambda: False)
    assert local.worker_start("auto") is None

    starts = []

    class Recorded(ProcessPoolExecutor):
        def __init__(self, *arguments, **options):
            starts.append(options["mp_context"] and options["mp_context"].get_start_method())
            super().__init__(*arguments, **options)

    monkeypatch.setattr(local, "ProcessPoolExecutor", Recorded)
    settings = BatchSettings(quality=1, effort=1, device="cpu")
    forked = run_batch(plan_jobs(five_photos, tmp_path / "forked", settings), settings, 2, lambda result: None)
    monkeypatch.setattr(local, "worker_start", lambda device: multiprocessing.get_context("spawn"))
    spawned = run_batch(plan_jobs(five_photos, tmp_path / "spawned", settings), settings, 2, lambda result: None)
    assert starts == [None, "spawn"]
    assert [r.status for r in forked] == [r.status for r in spawned] == ["converted"] * len(NAMES)
    for name in NAMES:
        assert (tmp_path / "spawned" / f"{name}.drc").read_bytes() == (tmp_path / "forked" / f"{name}.drc").read_bytes()


@pytest.mark.cuda
def test_a_batch_on_cuda_converts_in_its_worker_processes(tmp_path, five_photos):
    """The command checks its options on the GPU before the workers start, as a user's run
    does; the workers then use CUDA too, both ways."""
    from click.testing import CliRunner

    from diraccodec.cli import main

    encoded, decoded = tmp_path / "encoded", tmp_path / "decoded"
    for source, destination in ((five_photos, encoded), (encoded, decoded)):
        result = CliRunner().invoke(main, ["batch", str(source), str(destination), "-q", "1", "-e", "1", "-j", "2",
                                           "--device", "cuda"])
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in decoded.iterdir()) == [f"{name}.png" for name in NAMES]


def test_a_folder_converted_in_place_keeps_its_originals_even_when_overwriting(tmp_path, five_photos):
    """Run twice in place, a batch decodes its own a.drc back onto the original a.png: that
    output is an input of the batch, and is never replaced."""
    settings = BatchSettings(quality=1, effort=1, overwrite=True)
    originals = {name: (five_photos / f"{name}.png").read_bytes() for name in NAMES}
    run_batch(plan_jobs(five_photos, five_photos, settings), settings, 1, lambda result: None)
    results = run_batch(plan_jobs(five_photos, five_photos, settings), settings, 1, lambda result: None)
    refused = sorted(Path(r.job.source).name for r in results if r.status == "failed")
    assert refused == sorted([f"{name}.drc" for name in NAMES] + [f"{name}.png" for name in NAMES])
    assert all("is an input of this batch" in r.message for r in results)
    unforced = BatchSettings(quality=1, effort=1)  # without --overwrite a rerun goes on where it stopped
    results = run_batch(plan_jobs(five_photos, five_photos, unforced), unforced, 1, lambda result: None)
    assert len(results) == 10 and all(r.status == "skipped" and r.message == "output exists" for r in results)
    assert {name: (five_photos / f"{name}.png").read_bytes() for name in NAMES} == originals
    loop = tmp_path / "elsewhere"
    loop.mkdir()
    (loop / "a.drc").symlink_to(loop / "a.drc")  # a link to itself: a failed job at most, not a crash
    assert len(plan_jobs(five_photos, loop, settings)) == 2 * len(NAMES)
    link = tmp_path / "link"
    link.symlink_to(five_photos)  # the same folder by another name

    def replaced(source: Path | str, destination: Path | str) -> list[bool]:
        """Whether each of the folder's ten files (five images, five .drc files) replaces an input."""
        return [job.replaces_source for job in plan_jobs(source, destination, settings)]

    assert replaced(five_photos, link) == [True] * 10
    assert replaced(five_photos.absolute(), Path(os.path.relpath(five_photos))) == [True] * 10
    # a file:// URI names the same folder too (pyarrow reads it); a URI elsewhere replaces nothing here
    assert replaced(five_photos, five_photos.as_uri()) == [True] * 10
    assert replaced(five_photos, f"{five_photos.as_uri()}?x=1") == [True] * 10
    assert replaced(five_photos, "s3://bucket" + str(five_photos)) == [False] * 10
    if importlib.util.find_spec("pyarrow"):  # a URI source is listed through it
        assert replaced(link.as_uri(), five_photos) == [True] * 10


def test_a_file_where_an_inputs_subfolder_must_be_fails_that_input_by_name(tmp_path, small_image):
    source, destination = tmp_path / "in", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    small_image.save(source / "a.png")
    small_image.save(source / "sub" / "b.png")
    destination.mkdir()
    (destination / "sub").touch()  # a file named as the subfolder
    settings = BatchSettings(quality=1, effort=1)
    results = {Path(r.job.source).name: r for r in run_batch(plan_jobs(source, destination, settings), settings, 1,
                                                              lambda result: None)}
    assert results["a.png"].status == "converted" and results["b.png"].status == "failed"
    folder = destination / "sub"
    assert results["b.png"].message == f"cannot write {folder / 'b.drc'}: {folder} is not a folder"


def test_a_destination_inside_the_source_is_not_read_as_input(tmp_path, five_photos):
    settings = BatchSettings(quality=1, effort=1)
    inside = five_photos / "encoded"
    for _ in range(2):  # the second run finds the first's outputs under the source
        jobs = plan_jobs(five_photos, inside, settings)
        assert sorted(Path(job.source).name for job in jobs) == [f"{name}.png" for name in NAMES]
        run_batch(jobs, settings, 1, lambda result: None)
    # named by a file:// URI, the destination is the same folder
    assert sorted(Path(job.source).name for job in plan_jobs(five_photos, inside.as_uri(), settings)) == \
        [f"{name}.png" for name in NAMES]
    assert sorted(p.relative_to(inside).as_posix() for p in inside.rglob("*")) == [f"{name}.drc" for name in NAMES]


def test_diffusion_weights_are_checked_only_where_a_decode_may_run_steps(tmp_path, small_image):
    from click.testing import CliRunner

    from diraccodec.cli import main

    source = tmp_path / "in"
    source.mkdir()
    small_image.save(source / "photo.png")
    not_weights = source / "photo.png"  # no diffusion weights at all
    runner = CliRunner()
    for number, steps in enumerate((["--steps", "0"], ["--steps", "2"], [])):  # images alone: no step runs
        result = runner.invoke(main, ["batch", str(source), str(tmp_path / f"out{number}"), "-q", "1", "-e", "1",
                                      *steps, "--diffusion-weights", str(not_weights)])
        assert result.exit_code == 0, result.output
    (source / "photo.png").rename(source / "kept.png")
    (tmp_path / "out0" / "photo.drc").rename(source / "photo.drc")
    result = runner.invoke(main, ["batch", str(source), str(tmp_path / "mixed"), "-q", "1", "-e", "1", "--steps",
                                  "0", "--diffusion-weights", str(source / "kept.png")])
    assert result.exit_code == 0 and (tmp_path / "mixed" / "photo.png").exists(), result.output
    result = runner.invoke(main, ["batch", str(source), str(tmp_path / "stepped"), "-q", "1", "-e", "1", "--steps",
                                  "2", "--diffusion-weights", str(source / "kept.png")])
    assert result.exit_code == 2 and "kept.png" in result.output and not (tmp_path / "stepped").exists()
    # without --steps, named diffusion weights are there for the files' recommendations: checked too
    result = runner.invoke(main, ["batch", str(source), str(tmp_path / "recommended"), "-q", "1", "-e", "1",
                                  "--diffusion-weights", str(source / "kept.png")])
    assert result.exit_code == 2 and "kept.png" in result.output and not (tmp_path / "recommended").exists()


def test_a_link_to_nothing_and_a_folder_in_an_output_s_place_fail_by_name(tmp_path, small_image):
    source, destination = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    small_image.save(source / "photo.png")
    (source / "gone.png").symlink_to(tmp_path / "deleted.png")
    (destination / "photo.drc").mkdir(parents=True)  # a folder where the output goes
    settings = BatchSettings(quality=1, effort=1)
    results = {Path(r.job.source).name: r for r in run_batch(plan_jobs(source, destination, settings), settings, 1,
                                                              lambda result: None)}
    assert results["gone.png"].status == "failed"  # it went unmentioned
    assert results["gone.png"].message == f"{source / 'gone.png'} is a link to nothing ({tmp_path / 'deleted.png'})"
    assert results["photo.png"].status == "failed" and "photo.drc" in results["photo.png"].message  # not "skipped"


def test_a_name_that_cannot_be_looked_at_fails_alone_and_windows_invalid_names_are_no_files(
        tmp_path, small_image, monkeypatch):
    """One name whose stat is refused is that file's failure, by name, not its folder's (only
    when every name fails is the folder one that may not be entered); a link through a file
    is a link to nothing, and Windows' invalid name no file, as pathlib reads them."""
    from diraccodec.batch.storage import LOCAL

    (tmp_path / "sub").mkdir()
    for name in ("a.png", "odd.png", "sub/b.png", "sub/locked.png"):
        small_image.save(tmp_path / name)
    (tmp_path / "through.png").symlink_to(tmp_path / "a.png" / "x")  # ENOTDIR
    real_stat = os.stat

    def refusing_stat(path, *args, **options):
        if Path(path).name in ("odd.png", "locked.png"):
            windows = Path(path).name == "odd.png"
            error = OSError(errno.EINVAL if windows else errno.EACCES, "refused", str(path))
            error.winerror = 123 if windows else None  # ERROR_INVALID_NAME
            raise error
        return real_stat(path, *args, **options)

    monkeypatch.setattr(os, "stat", refusing_stat)
    listing = LOCAL.walk(tmp_path)
    assert listing.files == ["a.png", "sub/b.png", "sub/locked.png", "through.png"] and not listing.unreadable


def test_a_folder_the_batch_cannot_read_fails_by_name_and_an_empty_name_is_no_folder(
        tmp_path, small_image, monkeypatch):
    """Left out unsaid, its files would stay unconverted under a status of 0; the rest are
    converted all the same. An empty name (a script's unset variable) would read or write the
    whole current folder."""
    from click.testing import CliRunner

    from diraccodec.cli import main

    source = tmp_path / "in"
    for folder in ("sub/locked", ".private", "sub/entered/deeper", ".cache"):
        (source / folder).mkdir(parents=True)
        small_image.save(source / folder / "b.png")
    small_image.save(source / "a.png")
    small_image.save(source / "sub" / "entered" / "c.png")
    real_scandir, real_stat = os.scandir, os.stat
    refusing = [source / ".private"]  # hidden: left alone, so a batch goes on without it
    not_entered = [source / ".cache", source / "sub" / "entered"]  # listed, but none of their files stat

    def refused(path=".", *args, **options):  # as chmod 000 would, which root passes over
        if Path(path).absolute() in refusing:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args, **options)

    def stat_refused(path, *args, **options):  # as chmod 444 would: the names are read, not their files
        if any(folder in Path(path).absolute().parents for folder in not_entered):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **options)

    monkeypatch.setattr(os, "scandir", refused)
    monkeypatch.chdir(tmp_path)
    assert [Path(job.source).as_posix() for job in plan_jobs("in", "out", BatchSettings())] == \
        ["in/a.png", "in/sub/entered/c.png", "in/sub/entered/deeper/b.png", "in/sub/locked/b.png"]
    refusing.append(source / "sub" / "locked")  # the destination (inside SOURCE) is left alone, read or not
    assert [Path(job.source).as_posix() for job in plan_jobs("in", "in/sub/locked", BatchSettings())] == \
        ["in/a.png", "in/sub/entered/c.png", "in/sub/entered/deeper/b.png"]
    monkeypatch.setattr(os, "stat", stat_refused)
    result = CliRunner().invoke(main, ["batch", "in", "out", "-e", "1", "-j", "1"])
    failures = [f"in/sub/{name}: cannot read this folder (Permission denied): nothing in it is converted"
                for name in ("entered", "locked")]  # one line for a folder and all under it
    lines = result.output.splitlines()
    assert result.exit_code == 1
    assert lines[:3] == ["[1/3] converted in/a.png", *(f"[{index}/3] failed {failure}"
                                                        for index, failure in enumerate(failures, 2))]
    assert lines[-3:-1] == [f"failed: {failure}" for failure in failures]
    assert lines[-1].startswith("1 file and 2 unreadable folders in ")
    table = "\n".join(lines[3:-3])  # the folders counted apart from the files, none of which failed
    assert re.search(r"converted +│ +1 │", table) and re.search(r"unreadable folders +│ +2 │", table)
    assert "failed" not in table
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == ["a.drc"]
    refusing.append(source)  # nothing to convert: the batch fails as a whole
    result = CliRunner().invoke(main, ["batch", "in", "elsewhere", "-e", "1"])
    assert (result.exit_code, result.output) == (2, "dirac: error: cannot read folder in: Permission denied\n")
    for arguments, name in ((["in", ""], "DESTINATION"), (["", "out"], "SOURCE")):
        result = CliRunner().invoke(main, ["batch", *arguments, "-e", "1"], prog_name="dirac")
        assert result.exit_code == 2 and result.output == (
            f"dirac: error: Invalid value for '{name}': it is empty: name a folder (. for the current one) "
            f"(see: dirac batch --help)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_a_pipe_where_an_output_goes_fails_that_file_rather_than_wait_for_a_reader(tmp_path, small_image):
    source, destination = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    destination.mkdir()
    small_image.save(source / "a.png")
    small_image.save(source / "b.png")
    os.mkfifo(destination / "a.drc")
    reader = os.open(destination / "a.drc", os.O_RDONLY | os.O_NONBLOCK)  # a write into it fails the test, not hangs
    for overwrite in (False, True):
        settings = BatchSettings(quality=1, effort=1, overwrite=overwrite)
        results = {Path(r.job.source).name: r for r in run_batch(plan_jobs(source, destination, settings), settings,
                                                                   1, lambda result: None)}
        assert results["a.png"].status == "failed", overwrite
        assert results["a.png"].message == f"cannot write {destination / 'a.drc'}: it is a pipe or a device, not a file"
        assert results["b.png"].status in ("converted", "skipped")
    os.close(reader)


def test_links_to_files_are_converted_and_links_to_folders_not_followed(tmp_path, small_image):
    source, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    source.mkdir()
    elsewhere.mkdir()
    small_image.save(elsewhere / "a.png")
    (source / "linked.png").symlink_to(elsewhere / "a.png")
    (source / "folder").symlink_to(elsewhere)
    (source / "loop").symlink_to(source)  # a loop: not followed, so no endless walk
    jobs = plan_jobs(source, tmp_path / "out", BatchSettings())
    assert [Path(job.source).relative_to(source).as_posix() for job in jobs] == ["linked.png"]


@pytest.mark.parametrize(("body", "reason"), [
    ('raise ImportError("pyarrow requires NumPy 2.0 or newer, found 1.26.0")',
     r"pyarrow requires NumPy 2\.0 or newer, found 1\.26\.0"),
    ("import pyarrow.lib", r"No module named 'pyarrow\.lib'"),  # a part of it missing
])
def test_a_pyarrow_that_cannot_load_is_named_with_its_reason(tmp_path, monkeypatch, body, reason):
    """Installed but unloadable (pyarrow built for NumPy 2 beside NumPy 1.26, which pip allows)
    is not called missing: the reason is the one line."""
    import sys

    from diraccodec.batch.storage import arrow_storage
    from diraccodec.errors import DiracError

    broken = tmp_path / "pyarrow"
    broken.mkdir()
    (broken / "__init__.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name == "pyarrow" or name.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(DiracError, match=rf"^s3://unloadable/photos: pyarrow cannot load: {reason}$"):
        arrow_storage("s3://unloadable/photos")


@pytest.mark.parametrize(("cores", "workers"), [(64, 4), (5, 4), (4, 4), (3, 3), (1, 1), (None, 1)])
def test_default_workers_is_one_per_core_up_to_four(monkeypatch, cores, workers):
    """Each worker holds a model and its threads: more than four crowd the memory, fewer than one converts nothing."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert local.default_workers() == workers


class FailingFilesystem:
    """A pyarrow filesystem whose writes or moves fail, as a full disk or a lost mount would make them."""

    def __init__(self, filesystem, fail: str) -> None:
        self.filesystem, self.fail = filesystem, fail

    def __getattr__(self, name):
        return getattr(self.filesystem, name)

    def open_output_stream(self, path):
        stream = self.filesystem.open_output_stream(path)
        if self.fail != "write":
            return stream

        class HalfWriting:
            def __enter__(self):
                return self

            def __exit__(self, *exception):
                stream.close()

            def write(self, data):
                stream.write(data[: len(data) // 2])
                raise OSError("No space left on device")

        return HalfWriting()

    def move(self, source, destination):
        if self.fail == "move":
            raise OSError("Input/output error")
        return self.filesystem.move(source, destination)


@pytest.mark.parametrize("fail", ["write", "move"])
def test_a_failed_write_to_a_file_uri_leaves_no_output_and_no_temporary(tmp_path, monkeypatch, fail):
    """A file:// destination is no object store: a stream is visible while written, so a failure must leave
    neither a half-written output nor the temporary written beside it."""
    pytest.importorskip("pyarrow")
    from diraccodec.batch.storage import arrow_storage
    from diraccodec.errors import OutputWriteError

    folder = tmp_path / "out"
    folder.mkdir()
    location = f"file://{folder}/photo.drc"
    storage = arrow_storage(location)
    data = bytes(range(256)) * 64
    storage.write_atomic(location, data)  # as it is: written whole, nothing beside it
    assert (folder / "photo.drc").read_bytes() == data and os.listdir(folder) == ["photo.drc"]
    (folder / "photo.drc").unlink()
    monkeypatch.setattr(storage, "filesystem", FailingFilesystem(storage.filesystem, fail))
    with pytest.raises(OutputWriteError, match=f"^cannot write {location}: "):
        storage.write_atomic(location, data)
    assert os.listdir(folder) == []


class RefusingListing:
    """A pyarrow filesystem that cannot list one folder, nor so the tree as a whole, as an S3
    bucket whose policy denies one prefix."""

    def __init__(self, filesystem, refused: str) -> None:
        self.filesystem, self.refused = filesystem, refused

    def __getattr__(self, name):
        return getattr(self.filesystem, name)

    def get_file_info(self, selector):
        import pyarrow.fs

        if isinstance(selector, pyarrow.fs.FileSelector) and (
                selector.recursive or selector.base_dir.rstrip("/").endswith(self.refused)):
            raise OSError("AccessDenied: the policy refuses\nthis prefix")
        return self.filesystem.get_file_info(selector)


def test_a_uri_folder_that_cannot_be_listed_fails_by_name_and_the_rest_is_converted(tmp_path, small_image,
                                                                                    monkeypatch):
    """As a local folder that cannot be read: one refused prefix failed the whole batch."""
    pytest.importorskip("pyarrow")
    from click.testing import CliRunner

    from diraccodec.batch import storage
    from diraccodec.cli import main

    source = tmp_path / "in"
    for folder in ("sub/locked", "open/deeper"):
        (source / folder).mkdir(parents=True)
        small_image.save(source / folder / "b.png")
    small_image.save(source / "a.png")
    uri = f"file://{source}"
    arrow = storage.arrow_storage(uri)
    monkeypatch.setattr(arrow, "filesystem", RefusingListing(arrow.filesystem, "sub/locked"))
    listing = arrow.walk(uri)
    assert listing.files == ["a.png", "open/deeper/b.png"]
    assert listing.unreadable == {"sub/locked": "AccessDenied: the policy refuses\\nthis prefix"}
    result = CliRunner().invoke(main, ["batch", uri, str(tmp_path / "out"), "-e", "1", "-j", "1"])
    assert result.exit_code == 1, result.output
    assert (f"failed: {uri}/sub/locked: cannot read this folder (AccessDenied: the policy refuses\\nthis prefix): "
            "nothing in it is converted") in result.output.splitlines()
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.drc")) == \
        ["a.drc", "open/deeper/b.drc"]
    monkeypatch.setattr(arrow, "filesystem", RefusingListing(arrow.filesystem.filesystem, str(source.name)))
    result = CliRunner().invoke(main, ["batch", uri, str(tmp_path / "elsewhere"), "-e", "1"])
    assert (result.exit_code, result.output) == (
        2, f"dirac: error: cannot list {uri}: AccessDenied: the policy refuses\\nthis prefix\n")


def test_uris_that_differ_in_their_query_get_filesystems_of_their_own(tmp_path, monkeypatch):
    """?endpoint_override= names another server: a filesystem opened for one must not serve the other."""
    pytest.importorskip("pyarrow")
    from diraccodec.batch import storage

    monkeypatch.setattr(storage, "_FILESYSTEMS", {})
    one = storage.arrow_storage(f"file://{tmp_path}/a?endpoint_override=one.example:9000")
    other = storage.arrow_storage(f"file://{tmp_path}/b?endpoint_override=two.example:9000")
    assert one is not other
    assert storage.arrow_storage(f"file://{tmp_path}/c?endpoint_override=one.example:9000") is one


def test_a_pool_holds_one_file_per_worker_at_most():
    """When a worker dies, the files then in its pool are the suspects run again alone: a pool
    holding more than one per worker would make a file a suspect that no worker had begun."""
    from collections import deque
    from concurrent.futures import Future

    class InstantPool:
        def __init__(self) -> None:
            self.submitted = 0

        def submit(self, function, job, settings) -> Future:
            self.submitted += 1
            future: Future = Future()
            future.set_result(job)
            return future

    for workers in (1, 3):
        pool, queue = InstantPool(), deque(Job(Path(f"{index}.png"), Path(f"{index}.drc")) for index in range(7))
        done, most_in_pool = [], 0
        for result in local._results_in(pool, queue, BatchSettings(), workers, {}, set()):
            most_in_pool = max(most_in_pool, pool.submitted - len(done))
            done.append(result)
        assert most_in_pool == workers and len(done) == 7
