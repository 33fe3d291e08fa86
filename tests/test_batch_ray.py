"""`dirac batch --ray` on a local Ray instance: the local batch's outputs and guarantees; URIs through pyarrow."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from diraccodec.batch import BatchSettings, Job, JobResult, plan_jobs, ray_cluster, run_batch, run_batch_on_ray
from diraccodec.batch.ray_cluster import (
    RAY_MISSING,
    WORKER_DIED,
    Converter,
    WorkerPlan,
    check_reachable,
    plan_workers,
)
from diraccodec.batch.storage import join, location_of
from diraccodec.cli import main
from diraccodec.compute import single_thread
from diraccodec.errors import DiracError

RAY_PROGRAMS = ("/ray/raylet", "/gcs_server")  # the processes a Ray instance runs


def ray_processes() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and any(p in (entry / "cmdline").read_text() for p in RAY_PROGRAMS):
                found.add(int(entry.name))
    return found


def assert_no_new_ray_processes(before: set[int]) -> None:
    deadline = time.monotonic() + 20
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_processes() - before


@pytest.fixture
def photos(tmp_path: Path, small_image: Image.Image) -> Path:
    source = tmp_path / "photos"
    (source / "nested").mkdir(parents=True)
    small_image.save(source / "one.png")
    small_image.rotate(90, expand=True).save(source / "nested" / "two.jpg", quality=90)
    small_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(source / "a b#3.png")
    (source / "bad.png").write_bytes(b"not an image")
    return source


def invoked(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[str]:
    """A local Ray instance of 2 CPUs in this process, its files in a short temporary folder (Ray's
    socket paths must stay short), and nothing of it left running afterwards."""
    ray = pytest.importorskip("ray")
    before = ray_processes()
    folder = tempfile.mkdtemp(prefix="r", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, _temp_dir=folder)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        assert_no_new_ray_processes(before)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_ray_batch_equals_the_local_batch_skips_and_reports_failures(tmp_path: Path, photos: Path, ray_instance: str):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    with single_thread():
        assert invoked("batch", photos, local / "encoded", "-q", "2", "-j", "1")[0] == 1
    code, output = invoked("batch", photos, on_ray / "encoded", "-q", "2", "--ray", ray_instance, "-j", "2")
    assert code == 1, output  # bad.png failed ...
    assert "failed" in output and "bad.png" in output and "Traceback" not in output
    encoded = files_under(on_ray / "encoded")
    assert sorted(encoded) == ["a b#3.drc", "nested/two.drc", "one.drc"]  # ... the others converted
    assert encoded == files_under(local / "encoded")  # byte for byte

    with single_thread():
        assert invoked("batch", local / "encoded", local / "decoded", "-j", "1")[0] == 0
    code, output = invoked("batch", on_ray / "encoded", on_ray / "decoded", "--ray", ray_instance, "-j", "2")
    assert code == 0, output
    for name in ("a b#3.png", "nested/two.png", "one.png"):
        assert np.array_equal(pixels(on_ray / "decoded" / name), pixels(local / "decoded" / name))

    (photos / "bad.png").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (on_ray / "encoded").rglob("*.drc")}
    code, output = invoked("batch", photos, on_ray / "encoded", "-q", "2", "--ray", ray_instance)
    assert code == 0 and "skipped" in output, output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert not [p for p in (on_ray / "encoded").rglob("*") if p.is_file() and p.suffix != ".drc"]


@pytest.mark.slow
def test_ray_keeps_a_folder_s_originals_when_converting_in_place(photos: Path, ray_instance: str):
    """The job's flags travel to the actor with it: a decode onto an input of the batch fails there too."""
    (photos / "bad.png").unlink()
    original = (photos / "one.png").read_bytes()
    assert invoked("batch", photos, photos, "-q", "2", "-e", "1", "--ray", ray_instance, "-j", "2")[0] == 0
    code, output = invoked("batch", photos, photos, "-q", "2", "-e", "1", "--overwrite", "--ray", ray_instance)
    assert code == 1 and "is an input of this batch" in output, output
    assert (photos / "one.png").read_bytes() == original


class DiesOnTwo(Converter):
    """A worker whose process ends, as one the kernel kills for memory would, on the file named two."""

    def convert(self, job: Job) -> JobResult:
        if PurePosixPath(str(job.source)).stem == "two":
            os._exit(1)
        return super().convert(job)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 1])  # one: the actor holds one.png, sent after two.jpg, when it dies
def test_a_dying_worker_fails_its_file_alone(tmp_path: Path, photos: Path, ray_instance: str, workers: int,
                                             monkeypatch: pytest.MonkeyPatch):
    from ray import cloudpickle

    this_module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(this_module)  # Ray's workers cannot import the tests
    monkeypatch.setattr(ray_cluster, "Converter", DiesOnTwo)
    settings = BatchSettings(quality=2)
    try:
        results = run_batch_on_ray(plan_jobs(photos, tmp_path / "out", settings), settings, ray_instance, workers,
                                   lambda _: None)
    finally:
        cloudpickle.unregister_pickle_by_value(this_module)
    outcomes = {PurePosixPath(str(r.job.source)).name: (r.status, r.message) for r in results}
    assert outcomes["two.jpg"] == ("failed", WORKER_DIED)
    assert outcomes["one.png"][0] == outcomes["a b#3.png"][0] == "converted"  # a fresh worker took over
    assert outcomes["bad.png"][0] == "failed" and "cannot read image" in outcomes["bad.png"][1]
    assert len(results) == 4 and (tmp_path / "out" / "one.drc").is_file()


class OtherWeights(Converter):
    """A worker on a node whose diraccodec or weights differ from the head's."""

    def ready(self) -> str:
        return "diraccodec 0.0.1 with base weights 0000000000000000"


@pytest.mark.slow
def test_workers_that_convert_with_other_weights_get_no_file(tmp_path: Path, photos: Path, ray_instance: str,
                                                             monkeypatch: pytest.MonkeyPatch):
    from ray import cloudpickle

    this_module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(this_module)
    monkeypatch.setattr(ray_cluster, "Converter", OtherWeights)
    settings = BatchSettings(quality=2)
    try:
        results = run_batch_on_ray(plan_jobs(photos, tmp_path / "out", settings), settings, ray_instance, 2,
                                   lambda _: None)
    finally:
        cloudpickle.unregister_pickle_by_value(this_module)
    assert len(results) == 4 and all(r.status == "failed" for r in results)
    assert results[0].message.startswith("no Ray worker could start: a worker runs diraccodec 0.0.1 with base "
                                         "weights 0000000000000000, where this batch runs diraccodec ")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ray_alone_starts_a_local_instance_and_stops_it(tmp_path: Path, photos: Path):
    pytest.importorskip("ray")
    (photos / "bad.png").unlink()
    before = ray_processes()
    folder = tempfile.mkdtemp(prefix="r", dir="/tmp")
    environment = {**os.environ, "RAY_TMPDIR": folder}
    environment.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "diraccodec.cli", "batch", str(photos), str(tmp_path / "out"), "--ray", "-j", "1"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
        assert result.returncode == 0, result.stderr
        assert len(list((tmp_path / "out").rglob("*.drc"))) == 3
        assert_no_new_ray_processes(before)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_ray_missing_is_a_one_line_error(tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code, output = invoked("batch", photos, tmp_path / "out", "--ray")
    assert code == 2
    assert f"dirac: error: {RAY_MISSING}" in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()


def test_connecting_keeps_the_batch_s_sigterm_handling():
    """ray.init sets a SIGTERM handler that exits at once (seen with Ray 2.60): the batch's own,
    which stops its work cleanly, is put back."""
    import signal

    class Ray:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**options: object) -> None:
            signal.signal(signal.SIGTERM, lambda number, _frame: sys.exit(number))

    def batch_s(number: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, batch_s)
    try:
        assert ray_cluster.connect(Ray, ray_cluster.AUTO_ADDRESS)  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) is batch_s
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_unreachable_address_fails_in_seconds():
    started = time.monotonic()  # where ray.init would retry for minutes
    with pytest.raises(DiracError, match=re.escape("cannot connect to the Ray cluster at 127.0.0.1:1: ")):
        check_reachable("127.0.0.1:1")
    assert time.monotonic() - started < 5
    check_reachable("a-name-without-a-port")  # left to Ray


def test_an_empty_address_is_refused_before_ray_starts(photos: Path, tmp_path: Path):
    code, output = invoked("batch", photos, tmp_path / "out", "--ray", " ", "-q", "2", "--device", "cuda")
    assert (code, output) == (2, "dirac: error: the Ray address is empty: give HOST:PORT or ray://HOST:PORT, or none "
                                 "for a local or the configured cluster\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("cpus", "gpus", "node_cpus", "device", "workers", "expected"),
    [
        (8, 0, 4, "auto", None, WorkerPlan(8, 1.0, 0.0, 1)),  # one actor per CPU, one thread each
        (8, 0, 4, "auto", 2, WorkerPlan(2, 4.0, 0.0, 4)),  # fewer actors, more threads each
        (8, 0, 4, "auto", 1, WorkerPlan(1, 4.0, 0.0, 4)),  # no more than one node holds
        (2, 0, 2, "auto", 3, WorkerPlan(3, 0.6666, 0.0, 1)),  # more actors than CPUs: all three fit
        (16, 4, 8, "auto", None, WorkerPlan(4, 1.0, 1.0, 1)),  # one actor per GPU
        (16, 2, 8, "cuda", 4, WorkerPlan(4, 1.0, 0.5, 1)),  # two actors share each GPU
        (16, 4, 8, "cpu", None, WorkerPlan(16, 1.0, 0.0, 1)),  # --device cpu leaves the GPUs alone
    ],
)
def test_workers_share_out_the_cluster(cpus, gpus, node_cpus, device, workers, expected):
    assert plan_workers(cpus, gpus, node_cpus, device, workers) == expected


def test_cuda_on_a_cluster_without_gpus_is_refused():
    with pytest.raises(DiracError, match="no GPUs"):
        plan_workers(8, 0, 8, "cuda", None)


def test_uris_through_pyarrow_give_the_local_paths_outputs(tmp_path: Path, photos: Path):
    pytest.importorskip("pyarrow")
    settings = BatchSettings(quality=2)
    source_uri, target_uri = photos.as_uri(), (tmp_path / "by uri").as_uri()
    jobs = plan_jobs(source_uri, target_uri, settings)
    assert [str(job.target).removeprefix(target_uri) for job in jobs] == \
        ["/a%20b%233.drc", "/bad.drc", "/nested/two.drc", "/one.drc"]
    results = {str(r.job.source).rsplit("/", 1)[1]: r for r in run_batch(jobs, settings, 1, lambda _: None)}
    assert results["bad.png"].status == "failed" and "cannot read image" in results["bad.png"].message
    run_batch(plan_jobs(photos, tmp_path / "by path", settings), settings, 1, lambda _: None)
    assert files_under(tmp_path / "by uri") == files_under(tmp_path / "by path")
    assert [r.status for r in run_batch(jobs, settings, 1, lambda _: None)].count("skipped") == 3


def test_a_uri_with_a_query_converts_both_ways(tmp_path: Path, photos: Path):
    """The suffix that says what a file is comes from the URI's path, not from after its query."""
    pytest.importorskip("pyarrow")
    settings = BatchSettings(quality=2, effort=1)
    encoded, decoded = f"{(tmp_path / 'encoded').as_uri()}?x=1", f"{(tmp_path / 'decoded').as_uri()}?x=1"
    jobs = [job for job in plan_jobs(photos, encoded, settings) if Path(job.source).name == "one.png"]
    assert [r.status for r in run_batch(jobs, settings, 1, lambda _: None)] == ["converted"]
    back = plan_jobs(encoded, decoded, settings)
    assert [job.encodes for job in back] == [False]
    assert [r.status for r in run_batch(back, settings, 1, lambda _: None)] == ["converted"]
    with Image.open(tmp_path / "decoded" / "one.png") as image, Image.open(photos / "one.png") as original:
        assert image.size == original.size


def test_a_uri_s_query_stays_after_the_names_joined_to_its_path():
    from diraccodec.batch.jobs import _inside
    from diraccodec.batch.storage import local_path

    # the file:// URIs pyarrow reads as local paths, and those it refuses (left to it, to refuse in one line)
    assert local_path("file:///my%20in/a.png?x=1#y") == Path("/my in/a.png")
    assert local_path("in/a.png") == Path("in/a.png")
    assert local_path("file://localhost/in") is None and local_path("FILE:///in") is None


    assert join("s3://bucket/photos?region=eu-west-1", "a b#1.png") == "s3://bucket/photos/a%20b%231.png?region=eu-west-1"
    assert join("s3://bucket/photos/", "x.drc") == "s3://bucket/photos/x.drc"
    # a destination inside the source is found with the query too (its files are then not read as inputs)
    assert str(_inside("s3://b/in/my%20out?region=x", "s3://b/in?region=x")) == "my out"
    assert _inside("s3://b/in/out?region=y", "s3://b/in?region=x") is None  # another endpoint
    assert str(_inside("s3://b/my%20in/out", "s3://b/my in")) == "out"  # spelt two ways
    assert str(_inside("s3://b/in//out/", "s3://b/in/")) == "out"


def test_a_file_uri_with_a_drive_is_that_drive_s_path_on_windows(monkeypatch):
    """pyarrow reads file:///C:/photos as C:\\photos: the folder guards must see the same path,
    not "/C:/photos" (simulated: Windows' url2pathname, the one urllib.request uses there)."""
    import nturl2path

    from diraccodec.batch import storage

    monkeypatch.setattr(storage, "url2pathname", nturl2path.url2pathname)
    assert storage.local_path("file:///C:/my%20photos/a.png?x=1") == Path("C:\\my photos\\a.png")


def test_a_destination_uri_that_cannot_be_opened_fails_once_before_any_file(photos: Path):
    pytest.importorskip("pyarrow")
    code, output = invoked("batch", photos, "xyz://bucket/out", "-q", "2", "-e", "1")
    assert code == 2 and output == "dirac: error: cannot open xyz://bucket/out: Unrecognized filesystem type in " \
                                   "URI: xyz://bucket/out\n"  # not once per file, each a failure


def test_an_empty_object_in_an_object_store_is_not_a_finished_output():
    """Azure's writer makes the blob, empty, before it writes: a killed write left one, which a
    rerun took for a finished output and skipped."""
    pyarrow_fs = pytest.importorskip("pyarrow.fs")
    from diraccodec.batch.storage import ArrowStorage

    class Store:
        type_name = "abfs"

        def __init__(self, size: int) -> None:
            self.size = size

        def get_file_info(self, path: str):
            return pyarrow_fs.FileInfo(path, type=pyarrow_fs.FileType.File, size=self.size)

    assert not ArrowStorage(Store(0), "bucket/").exists("abfs://bucket/out/a.drc")
    assert ArrowStorage(Store(31), "bucket/").exists("abfs://bucket/out/a.drc")


def test_uri_storage_writes_atomically_and_reports_missing_files(tmp_path: Path):
    pytest.importorskip("pyarrow")
    from diraccodec.batch.storage import storage_for

    folder = location_of(tmp_path.as_uri())
    target = join(folder, "deep/er/out file.drc")
    storage = storage_for(target)
    assert not storage.exists(target)
    storage.write_atomic(target, b"data")
    assert storage.exists(target) and storage.read(target) == b"data"
    assert (tmp_path / "deep" / "er" / "out file.drc").read_bytes() == b"data"
    assert storage.walk(folder).files == ["deep/er/out file.drc"]  # no temporary file left beside it
    with pytest.raises(DiracError, match="no such file"):
        storage.read(join(folder, "missing.png"))
    with pytest.raises(DiracError, match="no such folder"):
        plan_jobs(join(folder, "missing"), folder, BatchSettings())


@pytest.mark.slow
def test_the_per_image_script_times_both_ways_and_compares_their_outputs(tmp_path: Path, small_image: Image.Image):
    pytest.importorskip("ray")
    source = tmp_path / "photos"
    source.mkdir()
    small_image.save(source / "original.png")
    for turn in Image.Transpose:  # 8 images in all, the fewest the script takes
        small_image.transpose(turn).save(source / f"{turn.name.lower()}.png")
    before = ray_processes()
    # one worker: Ray's actor takes every core's thread, so the local run must too (the suite's
    # OMP_NUM_THREADS=1 would give it one): on a CPU with bfloat16 the bytes follow the thread count
    environment = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "scripts/batch_per_image.py", str(source), "--workers", "1", "--runs", "1"],
                          capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    figure = r"\d+\.\d{3} \[\d+\.\d{3}-\d+\.\d{3}\]"  # the median [lowest-highest]
    assert re.fullmatch(rf"  encode: local {figure}, Ray {figure} \([+-]\d+%\)", lines[1])
    assert re.fullmatch(rf"  decode: local {figure}, Ray {figure} \([+-]\d+%\)", lines[2])
    assert lines[3] == "  outputs byte-identical"
    assert_no_new_ray_processes(before)
