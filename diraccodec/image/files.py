"""Reading inputs and writing outputs so that a failure never leaves a half-written file."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from diraccodec.errors import DiracError, ImageReadError, LimitExceededError, OutputWriteError, counted, warn
from diraccodec.image.metadata import pillow_reads_whole_metadata, save_options
from diraccodec.image.profiles import grey_shown_in_srgb, is_grey_profile
from diraccodec.options import DEFAULT_PNG_COMPRESSION

WRITE_CHECK_NAME = "write-check"  # the trial file is hidden, as a temporary file: .write-check.<random>.part
# Output formats chosen by suffix; anything else is refused rather than guessed.
IMAGE_FORMATS = {".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".jpg": "JPEG",
                 ".jpeg": "JPEG"}
FORMATS_WITHOUT_PROFILES = {"BMP"}  # Pillow's BMP writer has no place for an ICC profile
# Names of this process's open file descriptors: /dev/stdout and /dev/stderr, /dev/fd/N, /proc/self/fd/N
_STANDARD_DESCRIPTORS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_DESCRIPTOR_PATH = re.compile(r"/(?:dev/fd|proc/(?P<process>self|\d+)/fd)/(?P<number>\d+)")


def read_bytes(path: Path, check_start: Callable[[bytes], int | None] | None = None, start_bytes: int = 0) -> bytes:
    """The file's bytes; `check_start` sees its first `start_bytes` before the rest is read
    (and may raise), so that a large file of the wrong kind is refused without reading it whole
    (read_checked)."""
    try:
        with open(path, "rb", buffering=0) as stream:  # unbuffered: read_checked reads it whole once
            return read_checked(stream, check_start, start_bytes)
    except DiracError:  # check_start's (some are OSErrors too)
        raise
    except FileNotFoundError:
        if Path(path).is_symlink():
            raise DiracError(f"{path} is a link to nothing ({os.readlink(path)})") from None
        raise DiracError(f"no such file: {path}") from None
    except OSError as error:
        # Windows says "permission denied" of a folder; os.path.isdir never raises (Path.is_dir
        # does, in a folder this user may not search)
        if isinstance(error, IsADirectoryError) or os.path.isdir(path):
            raise DiracError(f"{path} is a folder, not a file") from None
        raise ImageReadError(f"cannot read {path}: {error.strerror or error}") from None


# The most an image file may hold for each pixel within the limit (16-bit RGBA takes 8 bytes, an
# ASCII PPM of 16-bit values up to 18), and beside its pixels (metadata, profiles, thumbnails)
IMAGE_BYTES_PER_PIXEL_AT_MOST = 24
IMAGE_ROOM_BESIDE_PIXELS = 5 << 24


def read_image_file(stream: BinaryIO, max_pixels: int, name: str) -> bytes:
    """An image file's bytes from a stream that Pillow would read whole (standard input, a
    file object), no further than a file of `max_pixels` pixels can hold and one byte more: a
    stream without an end (/dev/zero) is refused, not read until memory runs out."""
    most = IMAGE_ROOM_BESIDE_PIXELS + IMAGE_BYTES_PER_PIXEL_AT_MOST * max_pixels
    data = _read_up_to(stream, most)
    if len(data) > most:
        raise LimitExceededError(f"{name} holds over {counted(most, 'byte')}, more than an image file within the "
                                 f"limit of {counted(max_pixels, 'pixel')} holds")
    return data


def read_checked(stream: BinaryIO, check_start: Callable[[bytes], int | None] | None, start_bytes: int) -> bytes:
    """What is left in `stream`, its first `start_bytes` shown to `check_start` before the rest
    is read. `check_start` may raise, and returns the most bytes the whole may hold (None: no
    bound), of which one more is read: enough for the reader to see that it is too long, and a
    stream that has no end is not read until memory runs out. An unbuffered file is read again
    from there, in one piece: the start joined to the rest would be a copy of the file (a
    pipe's bytes are joined: they cannot be read again)."""
    if check_start is None:
        return stream.read()
    start = _read_to_count(stream, start_bytes)  # a pipe's read may return less than asked
    most = check_start(start)
    if isinstance(stream, io.RawIOBase) and stream.seekable():
        stream.seek(-len(start), os.SEEK_CUR)
        return _read_up_to(stream, most)
    return start + _read_up_to(stream, None if most is None else max(most - len(start), 0))


def _read_up_to(stream: BinaryIO, most: int | None) -> bytes:
    """The rest of `stream`, or its next `most` bytes and one more where it holds more. A disk
    file is read as far as its size says, in one piece (no buffer of the bound's size), then on
    in small reads to its end (it may have grown); a pipe 1 MiB at a time."""
    if most is None:
        return stream.read()
    chunks: list[bytes] = []
    wanted, size = most + 1, _disk_bytes_left(stream)
    if size:
        wanted -= _read_into(chunks, stream, min(wanted, size), 1 << 30)  # a read returns 2 GiB at most
    _read_into(chunks, stream, wanted, 1 << 16 if size else 1 << 20)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_to_count(stream: BinaryIO, count: int) -> bytes:
    chunks: list[bytes] = []
    _read_into(chunks, stream, count, count)
    return b"".join(chunks)


def _read_into(chunks: list[bytes], stream: BinaryIO, count: int, piece: int) -> int:
    """Read up to `count` bytes into `chunks`, at most `piece` at a time, until the end: how many came."""
    done = 0
    while done < count and (chunk := stream.read(min(count - done, piece))):
        chunks.append(chunk)
        done += len(chunk)
    return done


def _disk_bytes_left(stream: BinaryIO) -> int | None:
    """What a file on disk has left to read, by its size (None for a pipe, a device, an object in
    memory or a decompressing reader, whose descriptor's size is not what it reads)."""
    raw = getattr(stream, "raw", stream)
    if not isinstance(raw, io.FileIO):
        return None
    try:
        status = os.fstat(raw.fileno())
        return max(status.st_size - stream.tell(), 0) if stat.S_ISREG(status.st_mode) else None
    except (OSError, ValueError):
        return None


# The temporary files this process is writing now: one ended by a signal removes them
# (remove_unfinished) rather than leave them beside the outputs.
_UNFINISHED: set[Path] = set()


def remove_unfinished() -> None:
    """Remove the temporary files being written, for a process about to end mid-write (a batch
    worker told to stop when another worker died). Safe in a signal handler: a name is listed
    before its file is made and dropped after its rename, so none is missed, and a name whose
    file is not there is passed over."""
    _remove(list(_UNFINISHED))


def _created_beside(path: Path, made: list[Path]) -> int:
    """A new hidden file beside `path`, open for writing; its name goes on `made` (and on the
    process's unfinished list) before the file exists, so that the caller's cleanup finds it
    whenever an interruption lands. It is created with mode 0666, so the system gives it what
    a plain write would (the umask applied), with no umask read here. Its name keeps at most
    200 bytes of `path`'s, so that a valid long name stays valid."""
    while True:
        temporary = path.with_name(f"{_temporary_prefix(path, os.getpid())}{secrets.token_hex(6)}.part")
        made.append(temporary)
        _UNFINISHED.add(temporary)
        try:
            # O_BINARY: on Windows a file opened without it writes each 0x0A as 0x0D 0x0A
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:  # another's file: never removed as ours
            made.pop()
            _UNFINISHED.discard(temporary)


def _temporary_prefix(path: Path, writer: int) -> str:
    """How the names of the temporary files that process `writer` makes for `path` begin:
    hidden, and naming their writer, so that what one ended mid-write leaves can be told from
    another writer's (remove_left_by)."""
    shown = os.fsencode(path.name)[:200].decode(errors="ignore")
    return f".{shown}.{writer}-"


TEMPORARY_END = re.compile(r"[0-9a-f]{12}\.part")  # what follows _temporary_prefix


def remove_left_by(writers: Collection[int], paths: Iterable[Path]) -> None:
    """Remove the temporary files that the processes `writers` left beside `paths`, for a
    process whose workers have ended mid-write without their own cleanup (killed, out of
    memory, or stopped where no signal runs a handler: on Windows). Another process's
    temporary file for the same path stays."""
    for path in paths:
        with contextlib.suppress(OSError, OutputWriteError):  # a folder this process may not search
            target = _written_path(path)
            for writer in writers:
                prefix = _temporary_prefix(target, writer)
                for temporary in target.parent.glob(f"{glob.escape(prefix)}*.part"):
                    if TEMPORARY_END.fullmatch(temporary.name[len(prefix):]):
                        temporary.unlink(missing_ok=True)


REPLACE_TRIES = 5  # on Windows, over about a second


def _replace(temporary: Path, target: Path) -> None:
    """os.replace, tried again on Windows while the target is held open a moment (a viewer, a
    virus scanner or the search indexer reading the file it replaces)."""
    for attempt in range(REPLACE_TRIES):
        try:
            os.replace(temporary, target)
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == REPLACE_TRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def _remove(temporaries: list[Path]) -> None:
    for temporary in temporaries:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def _forget_unfinished(made: list[Path]) -> None:
    _UNFINISHED.difference_update(made)


def _written_path(path: Path) -> Path:
    """Where a write of `path` lands: the file a symbolic link names, where that is a regular
    file (a plain write goes through the link, and the link stays); else `path` itself (a
    dangling link, or one to anything else, is replaced by the file)."""
    try:
        if not path.is_symlink():
            return path
        target = Path(os.path.realpath(path))
        return target if target.is_file() else path
    except OSError as error:  # a link into a folder this process may not search
        raise OutputWriteError(f"cannot write {path}: {error.strerror or error}") from None


def _as_named(path: Path, target: Path) -> str:
    """`path` for messages, with the file it stands for where that is another."""
    return str(path) if target == path else f"{path} (a link to {target})"


def check_writable(path: Path) -> None:
    """Fail now, before any work, where `write_atomic(path)` would fail for where `path` is: a
    folder in its place, something else where a folder must be, a folder this process may not
    write in. Nothing is left behind: missing folders are made only by the write, and the
    trial file goes again."""
    path = Path(path)
    if (number := descriptor_of(path)) is not None:  # written into (write_atomic)
        _check_descriptor_writable(path, number)
        return
    mode = _mode(path)
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputWriteError(f"cannot write {path}: it is a folder; name a file in it")
    if _is_special_mode(mode):  # written in place (write_atomic)
        if not os.access(path, os.W_OK):
            raise OutputWriteError(f"cannot write {path}: Permission denied")
        return
    if mode is not None and stat.S_ISSOCK(mode):
        raise OutputWriteError(f"cannot write {path}: it is a socket")
    target = _written_path(path)
    _check_can_create_in(target.parent, _as_named(path, target))
    _check_not_read_only(target, _as_named(path, target))


def _check_not_read_only(target: Path, shown: str) -> None:
    """Refuse to replace a file this process may not write, as a plain write refuses it: the
    rename into place would pass over the file's own protection."""
    by_effective_ids = os.access in os.supports_effective_ids  # as the rename is checked, not the real user
    if os.path.isfile(target) and not os.access(target, os.W_OK, effective_ids=by_effective_ids):
        raise OutputWriteError(f"cannot write {shown}: Permission denied (this user may not write the file)")


def descriptor_of(path: Path) -> int | None:
    """The file descriptor of this process that `path` names (/dev/stdout, /dev/fd/3), or
    None. A write there goes into the descriptor as the shell set it up (`>> log` appends);
    opening the name anew would replace, or truncate, the file behind it. The descriptor may
    be closed (`>&-`): _check_descriptor_writable refuses it then."""
    if os.name != "posix":
        return None
    text = os.path.normpath(os.path.abspath(path))
    if (number := _STANDARD_DESCRIPTORS.get(text)) is None:
        named = _DESCRIPTOR_PATH.fullmatch(text)
        ours = named is not None and named["process"] in (None, "self", str(os.getpid()))
        number = int(named["number"]) if ours else None
    return number


def names_a_terminal(path: Path) -> bool:
    """Whether `path` names a descriptor open on a terminal (/dev/stdout, not redirected), where
    a binary output would be garbage, as the CLI's checks say for `-o -`."""
    number = descriptor_of(path)
    try:
        return number is not None and os.isatty(number)
    except OverflowError:
        return False


def _check_descriptor_writable(path: Path, number: int) -> None:
    """Open, and for writing."""
    import fcntl  # POSIX, as descriptor_of's names are

    try:
        flags = fcntl.fcntl(number, fcntl.F_GETFL)
    except (OSError, OverflowError):  # closed: a file the process opens later could take its number
        raise OutputWriteError(f"cannot write {path}: descriptor {number} is not open") from None
    if flags & os.O_ACCMODE == os.O_RDONLY:
        raise OutputWriteError(f"cannot write {path}: it is open for reading only")


def _write_descriptor(path: Path, number: int, data: bytes) -> None:
    _check_descriptor_writable(path, number)
    if number == 1 and sys.stdout is not None:
        sys.stdout.flush()  # text printed before goes first
    unwritten = memoryview(data)
    try:
        while unwritten:
            unwritten = unwritten[os.write(number, unwritten):]
    except OSError as error:
        raise OutputWriteError(f"cannot write {path}: {error.strerror or error}") from None


def _status(path: Path) -> os.stat_result | None:
    """The file's status through links, or None where there is none to read (never raises)."""
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _mode(path: Path) -> int | None:
    return None if (status := _status(path)) is None else status.st_mode


def _is_special_mode(mode: int | None) -> bool:
    return mode is not None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode))


def is_special(path: Path) -> bool:
    """Whether `path` is a device or a pipe (/dev/null, a FIFO), or names an open descriptor
    (/dev/stdout, whatever it leads to): written into, never replaced by a file."""
    return descriptor_of(path) is not None or _is_special_mode(_mode(path))


def check_writable_folder(folder: Path) -> None:
    """`check_writable` for files anywhere under `folder` (a batch's destination)."""
    _check_can_create_in(Path(folder), Path(folder))


def _check_can_create_in(folder: Path, shown: Path | str) -> None:
    """Whether a file can be created in `folder`, or, where it does not exist yet, in the
    nearest folder above it that does (where the write will make the rest). A dangling link
    on the way counts as there: the write could not make a folder in its place. Any failure,
    a folder on the way that may not be searched too, is an OutputWriteError naming `shown`."""
    if missing := _missing_folders(folder):
        folder = missing[-1].parent
    made: list[Path] = []
    try:
        if not folder.is_dir():
            raise OutputWriteError(f"cannot write {shown}: {folder} is not a folder")
        os.close(_created_beside(folder / WRITE_CHECK_NAME, made))
    except OSError as error:
        raise OutputWriteError(f"cannot write {shown}: {error.strerror or error}") from None
    finally:
        _remove(made)
        _forget_unfinished(made)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it into place, with the mode and
    owner a plain write would give it: a new file's from the umask, a replaced file's own
    permission bits, owner and group (as far as this process may set them); a file it may
    not write is refused. A symbolic link is written through (the file it names is replaced,
    the link stays), and a device or a pipe (/dev/null, a FIFO), or an open descriptor's name
    (/dev/stdout), is written into as it is. Folders the write makes go again if it fails."""
    path = Path(path)
    if (number := descriptor_of(path)) is not None:
        _write_descriptor(path, number, data)
        return
    if is_special(path):
        try:
            with open(path, "wb") as stream:
                stream.write(data)
        except OSError as error:
            raise OutputWriteError(f"cannot write {path}: {error.strerror or error}") from None
        return
    target = _written_path(path)
    shown = _as_named(path, target)
    replaced = _status(target)
    made: list[Path] = []  # the temporary file, once named: removed however the write ends early
    new_folders = _missing_folders(target.parent)
    try:
        handle = _created_in_new_folders(target, made)
        with os.fdopen(handle, "wb") as stream:
            _check_not_read_only(target, shown)  # after the folder's own check (a read-only file system)
            if replaced is not None and stat.S_ISREG(replaced.st_mode):
                _keep_owner(stream.fileno(), replaced)
                if hasattr(os, "fchmod"):  # not on Windows before Python 3.13, whose one bit is refused above
                    os.fchmod(stream.fileno(), stat.S_IMODE(replaced.st_mode) & 0o777)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        _replace(made[-1], target)
    except BaseException as error:  # Ctrl-C, SIGTERM (raised by the CLI) and failures alike
        _remove(made)
        for folder in new_folders:  # the deepest first; one another writer has put a file in stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(error, OSError):
            raise OutputWriteError(f"cannot write {shown}: {_why_not_written(target, error)}") from None
        raise
    finally:
        _forget_unfinished(made)


def _missing_folders(folder: Path) -> list[Path]:
    """The folders a write into `folder` makes, the deepest first."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _created_in_new_folders(target: Path, made: list[Path]) -> int:
    """`_created_beside(target)`, the folders on the way made first. Another writer's failed
    write may take a folder away again between the two (write_atomic): a few tries, since
    once the file is in it no one can."""
    for _ in range(2):
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            return _created_beside(target, made)
    target.parent.mkdir(parents=True, exist_ok=True)
    return _created_beside(target, made)


def _keep_owner(descriptor: int, replaced: os.stat_result) -> None:
    """Give the new file the replaced one's owner and group, as a plain write keeps them (a
    file replaced under sudo stays its owner's); where this process may not set the owner,
    the group alone (a member of it may), else the new file keeps what it was given."""
    if not hasattr(os, "fchown"):
        return
    made = os.fstat(descriptor)  # in a setgid folder, the folder's group
    if (made.st_uid, made.st_gid) == (replaced.st_uid, replaced.st_gid):
        return
    try:
        os.fchown(descriptor, replaced.st_uid, replaced.st_gid)
    except OSError:  # another user's file: its group at least, where this user is a member
        with contextlib.suppress(OSError):
            os.fchown(descriptor, -1, replaced.st_gid)


def _why_not_written(target: Path, error: OSError) -> str:
    """The error's reason, or which file stands where a folder on the way must be (mkdir says
    only "File exists", or "Not a directory" further down)."""
    if isinstance(error, FileExistsError | NotADirectoryError):
        for folder in reversed(target.parents):
            if os.path.lexists(folder) and not folder.is_dir():
                return f"{folder} is not a folder"
    return error.strerror or str(error)


def image_format_for(path: Path) -> str:
    try:
        return IMAGE_FORMATS[Path(path).suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(IMAGE_FORMATS))
        raise OutputWriteError(f"cannot write {path}: unknown image suffix (use one of {known})") from None


# The longest side an output format holds (libwebp's limit, libjpeg's); PNG, TIFF and BMP hold
# any image within the pixel limit
MOST_PIXELS_A_SIDE = {"WEBP": 16383, "JPEG": 65500}


def check_image_fits(image_format: str, width: int, height: int, has_alpha: bool) -> None:
    """Refuse an image the format cannot hold, before any work where the caller knows the size
    from a file's header. JPEG has no alpha, and BMP's 32-bit pixels none that readers agree
    on (Pillow reads them back as RGB): an image with alpha is refused there rather than written
    without it. WebP and JPEG hold sides of at most 16383 and 65500 pixels."""
    if has_alpha and image_format in ("JPEG", "BMP"):
        raise OutputWriteError(f"{image_format} cannot hold an alpha channel: write .png instead")
    most = MOST_PIXELS_A_SIDE.get(image_format)
    if most is not None and max(width, height) > most:
        raise OutputWriteError(f"{image_format} holds images of at most {most} pixels a side, not {width}x{height}: "
                               f"write .png instead")


def image_bytes(image: Image.Image, image_format: str, png_compression: int = DEFAULT_PNG_COMPRESSION) -> bytes:
    """The image encoded as `image_format` (a Pillow name), its profile and metadata kept;
    `png_compression`: zlib's level 0-9 for PNG."""
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if image_format == "WEBP" and image.mode in ("L", "LA") and is_grey_profile(image.info.get("icc_profile")):
        image = _grey_for_webp(image)
    if image_format == "PNG":
        options["compress_level"] = png_compression
    if image.info.get("icc_profile"):
        if image_format in FORMATS_WITHOUT_PROFILES:
            warn(f"the colour profile ({len(image.info['icc_profile']):,} bytes) is left out of the "
                 f"{image_format} output, which holds none: viewers show its colours as sRGB "
                 f"(write PNG, TIFF, WebP or JPEG to keep it)")
        options["icc_profile"] = image.info["icc_profile"]
    check_image_fits(image_format, image.width, image.height, image.mode in ("RGBA", "LA"))
    if image_format == "JPEG":
        options |= {"quality": 100, "subsampling": 0}  # full-resolution chroma: Pillow halves it otherwise
    if image_format == "WEBP":
        options |= {"lossless": True, "exact": True}  # exact: the colours under alpha 0 kept too
    image.save(buffer, format=image_format, **options, **save_options(image, image_format))
    return buffer.getvalue()


def _grey_for_webp(image: Image.Image) -> Image.Image:
    """WebP holds grey as RGB, which a grey profile cannot describe (readers refuse it or show
    the pixels as sRGB): the pixels are converted through the profile to sRGB, so that they
    show as they did; where Pillow cannot convert through the profile, it is left out, and said so."""
    shown = grey_shown_in_srgb(image)
    if shown is not None:
        return shown
    warn("the grey colour profile is left out of the WEBP output, which holds grey as RGB, and "
         "Pillow cannot convert through it: viewers show its greys as sRGB (write PNG, TIFF or JPEG to keep it)")
    plain = image.copy()
    del plain.info["icc_profile"]
    return plain


def written_mode(data: bytes) -> str:
    """The mode of an encoded image as readers open it (its header alone): a WebP holds grey as
    RGB, and leaves out an alpha that is opaque everywhere."""
    with pillow_reads_whole_metadata(), Image.open(io.BytesIO(data)) as written:
        return written.mode


def write_image(path: Path, image: Image.Image) -> None:
    write_atomic(path, image_bytes(image, image_format_for(path)))
