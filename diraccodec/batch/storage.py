"""Where a batch reads and writes: local paths, or URIs such as s3://bucket/photos through pyarrow.

A Ray cluster's workers must all reach the inputs and outputs, so besides a shared
filesystem a batch takes any URI that `pyarrow.fs.FileSystem.from_uri` understands. Both
kinds list a tree, read bytes, say whether a file exists and write atomically, so neither
runner knows which it has. Local paths stay `Path`s and behave as they always did.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from diraccodec.errors import DiracError, ImageReadError, OutputWriteError, one_line

if os.name == "nt":  # what urllib.request.url2pathname is, without importing http and email
    from nturl2path import url2pathname  # "/C:/photos/a%20b" -> "C:\\photos\\a b"
else:
    url2pathname = unquote

Location = Path | str  # a local path, or a URI string ("scheme://...")

# Object stores make a single put visible whole or not at all, and their "rename" is a copy.
OBJECT_STORES = {"s3", "gcs", "abfs"}


@dataclass(frozen=True)
class Listing:
    """What a walk of a folder tree found, as relative POSIX paths in the order of a sorted walk."""

    files: list[str]
    # folders under the tree that could not be read, with the reason: their files are missing
    # from `files`, and the batch fails each by name rather than leave them out unsaid
    unreadable: dict[str, str] = field(default_factory=dict)


class Storage(Protocol):
    """Where a batch reads and writes: a local disk or a store pyarrow opens, used alike by the
    jobs (`storage_for` picks one by the location)."""

    def walk(self, folder: Location) -> Listing:
        """Every file under `folder`, and every folder under it that could not be read."""

    def read(self, location: Location) -> bytes: ...

    def exists(self, location: Location) -> bool: ...

    def write_atomic(self, location: Location, data: bytes) -> None:
        """Never leave a half-written file at `location`, even when killed."""


def is_uri(location: Location) -> bool:
    return isinstance(location, str) and "://" in location


def location_of(text: str | Path) -> Location:
    """A URI stays a string (Path would fold its '//'); anything else becomes a Path."""
    return text if is_uri(text) else Path(text)


def local_path(location: Location) -> Path | None:
    """The local file a location names: a path, or a `file:///` URI, which pyarrow reads as
    that path (its query and fragment ignored), so the folder guards must see through it:
    `file:///p?x=1` and `/p` are one folder; on Windows `file:///C:/p` is `C:\\p`. None for any
    other URI (pyarrow refuses `file://host/p` and `FILE:///p`)."""
    if not is_uri(location):
        return Path(location)
    return Path(url2pathname(urlsplit(str(location)).path)) if str(location).startswith("file:///") else None


def path_of(location: Location) -> PurePosixPath:
    """The path part of a location, whose suffix says what a file is (a URI's query is not in it)."""
    return PurePosixPath(unquote(urlsplit(str(location)).path) if is_uri(location) else Path(location).as_posix())


def join(folder: Location, relative: str) -> Location:
    """`relative` is a raw name ("a b#1.png"): in a URI it is quoted, and `ArrowStorage.path`
    unquotes it; it joins the URI's path, before any query (`?endpoint_override=...`)."""
    if is_uri(folder):
        parts = urlsplit(str(folder))
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{quote(relative)}"))
    return Path(folder) / relative


def absolute(location: Location) -> Location:
    """The same place named from any working folder, for workers that run elsewhere."""
    return location if is_uri(location) else Path(location).absolute()


def storage_for(location: Location) -> Storage:
    return arrow_storage(location) if is_uri(location) else LOCAL


def sorted_relative(names: list[str]) -> list[str]:
    return sorted(names, key=PurePosixPath)


class LocalStorage:
    def walk(self, folder: Location) -> Listing:
        folder = Path(folder)
        if not folder.is_dir():
            raise DiracError(f"no such folder: {folder}")
        unreadable: dict[str, str] = {}

        def refused(place: str, error: OSError) -> None:
            reason = error.strerror or str(error)
            if Path(place) == folder:  # nothing to convert
                raise DiracError(f"cannot read folder {place}: {reason}")
            unreadable[Path(place).relative_to(folder).as_posix()] = reason

        found = []
        # links to folders are not followed
        for parent, folders, names in os.walk(folder, onerror=lambda error: refused(error.filename, error)):
            listed, failures = [], []
            for path in (Path(parent) / name for name in names):
                try:
                    if _is_listed(path):
                        listed.append(path)
                except OSError as error:  # listed, so that its job fails by name
                    listed.append(path)
                    failures.append(error)
            if failures and len(failures) == len(names):  # may be listed but not entered: none of it can be read
                refused(parent, failures[0])
                folders.clear()
            else:
                found += [path.relative_to(folder).as_posix() for path in listed]
        return Listing(sorted_relative(found), unreadable)

    def read(self, location: Location) -> bytes:
        from diraccodec.image.files import read_bytes

        return read_bytes(Path(location))

    def exists(self, location: Location) -> bool:
        """Whether an output is there to skip: a file (a folder of its name is no output; its write fails by name)."""
        try:
            return Path(location).is_file()
        except OSError as error:  # a name too long, a folder on the way that may not be searched
            raise OutputWriteError(f"cannot write {location}: {error.strerror or error}") from None

    def write_atomic(self, location: Location, data: bytes) -> None:
        from diraccodec.image.files import is_special, write_atomic

        if is_special(Path(location)):  # a FIFO would hold the batch until a reader came
            raise OutputWriteError(f"cannot write {location}: it is a pipe or a device, not a file")
        write_atomic(Path(location), data)


LOCAL = LocalStorage()


# What stat says of a name whose target is missing or cannot be resolved, which pathlib, too,
# takes for no file: POSIX errors, and Windows' "not ready", "invalid name" and a link loop
_NO_TARGET_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)
_NO_TARGET_WINERRORS = (21, 123, 1921)


def _is_listed(path: Path) -> bool:
    """A file, or a link to nothing (listed, so that its job fails by name rather than vanish
    unsaid). Any other error is raised, for the walk to weigh: one name's is that file's, every
    name's in a folder is a folder that may be listed but not entered (where some Pythons'
    Path.is_file would call each no file)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as error:
        if error.errno not in _NO_TARGET_ERRNOS and getattr(error, "winerror", None) not in _NO_TARGET_WINERRORS:
            raise
        return os.path.islink(path)


class ArrowStorage:
    """One pyarrow filesystem, e.g. one S3 bucket: URIs map to its paths by a fixed prefix."""

    def __init__(self, filesystem: Any, prefix: str) -> None:
        self.filesystem = filesystem
        self.prefix = prefix

    def path(self, uri: Location) -> str:
        return self.prefix + unquote(urlsplit(str(uri)).path).lstrip("/")

    def walk(self, folder: Location) -> Listing:
        """One listing of the whole tree where the store gives it (one request stream on S3); where
        it fails, folder by folder, so that a subfolder that cannot be listed fails by name and the
        rest is converted, as on a local disk."""
        import pyarrow.fs

        base = self.path(folder).rstrip("/")
        try:
            infos = self.filesystem.get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
        except FileNotFoundError:
            raise DiracError(f"no such folder: {folder}") from None
        except OSError as error:
            return self._walk_folders(folder, base, error)
        return Listing(sorted_relative([info.path[len(base) + 1:] for info in infos
                                        if info.type == pyarrow.fs.FileType.File]))

    def _walk_folders(self, folder: Location, base: str, error: OSError) -> Listing:
        import pyarrow.fs

        files: list[str] = []
        unreadable: dict[str, str] = {}
        pending = [base]
        while pending:
            place = pending.pop()
            try:
                infos = self.filesystem.get_file_info(pyarrow.fs.FileSelector(place))
            except FileNotFoundError:  # gone since its parent was listed: nothing to convert
                if place == base:
                    raise DiracError(f"no such folder: {folder}") from None
                continue
            except OSError as refusal:
                if place == base:  # nothing to convert: the whole tree's error says most
                    raise DiracError(f"cannot list {folder}: {one_line(str(error))}") from None
                unreadable[place[len(base) + 1:]] = one_line(str(refusal))
                continue
            for info in infos:
                if info.type == pyarrow.fs.FileType.File:
                    files.append(info.path[len(base) + 1:])
                elif info.type == pyarrow.fs.FileType.Directory:
                    pending.append(info.path)
        return Listing(sorted_relative(files), unreadable)

    def read(self, location: Location) -> bytes:
        try:
            with self.filesystem.open_input_stream(self.path(location)) as stream:
                return stream.readall()
        except FileNotFoundError:
            raise DiracError(f"no such file: {location}") from None
        except OSError as error:
            raise ImageReadError(f"cannot read {location}: {error}") from None

    def exists(self, location: Location) -> bool:
        """Whether a finished file is there. An empty object in an object store is not one: Azure's
        writer makes the blob empty before it writes (no output of a batch is ever empty)."""
        import pyarrow.fs

        try:
            info = self.filesystem.get_file_info(self.path(location))
        except OSError as error:
            raise DiracError(f"cannot reach {location}: {error}") from None
        if info.type == pyarrow.fs.FileType.File and info.size == 0 and self.filesystem.type_name in OBJECT_STORES:
            return False
        return info.type != pyarrow.fs.FileType.NotFound

    def write_atomic(self, location: Location, data: bytes) -> None:
        path = self.path(location)
        try:
            if self.filesystem.type_name in OBJECT_STORES:
                self._put(path, data)
                return
            # elsewhere (local disks, HDFS) a stream is visible while written: write beside it, then rename
            parent, _, name = path.rpartition("/")
            self.filesystem.create_dir(parent, recursive=True)
            temporary = f"{parent}/.{name}.{uuid.uuid4().hex}.part"
            try:
                self._put(temporary, data)
                self.filesystem.move(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.filesystem.delete_file(temporary)
                raise
        except OSError as error:
            raise OutputWriteError(f"cannot write {location}: {error}") from None

    def _put(self, path: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(path) as stream:
            stream.write(data)


_FILESYSTEMS: dict[tuple[str, str, str], ArrowStorage] = {}


def arrow_storage(uri: Location) -> ArrowStorage:
    """Resolved once per bucket or host and process: for S3 that asks the region over the network."""
    uri = str(uri)
    parts = urlsplit(uri)
    key = (parts.scheme, parts.netloc, parts.query)
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = _open_arrow_storage(uri)
    return _FILESYSTEMS[key]


def _open_arrow_storage(uri: str) -> ArrowStorage:
    try:
        import pyarrow.fs
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == "pyarrow":
            raise DiracError(f"{uri}: URIs need pyarrow (pip install pyarrow), or use a shared filesystem path") \
                from None
        # installed, but it cannot load (say, built for a newer NumPy, or a part of it missing)
        raise DiracError(f"{uri}: pyarrow cannot load: {one_line(str(error))}") from None
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as error:
        raise DiracError(f"cannot open {uri}: {error}") from None
    # pyarrow's path is a fixed prefix (an S3 bucket, or "/" on a local disk) plus the URI's own path
    path, tail = path.rstrip("/"), unquote(urlsplit(uri).path).strip("/")
    if not path.endswith(tail):
        raise DiracError(f"cannot map {uri} to a pyarrow path (pyarrow gave {path})")
    prefix = path[: len(path) - len(tail)] if tail else path
    return ArrowStorage(filesystem, prefix if prefix.endswith("/") else prefix + "/")
