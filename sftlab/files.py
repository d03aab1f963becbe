"""Writing files: the one atomic writer of the package and the checks on where output may go.

Every file sftlab writes goes through :func:`write_atomic` (or :func:`atomic_file` for a file
written line by line): the bytes go to a temporary file beside the target, are flushed to disk,
and replace the target with one ``os.replace``, so a crash or a full disk leaves the old file
whole. The new file gets the user's normal permissions (``0666`` less the umask, or the mode of
the file it replaces), never the ``0600`` of a bare temporary file. A directory built whole (a
checkpoint, a final model, a converted GGUF model) is built beside its target and published with
:func:`publish_dir`; a log that grows line by line (``metrics.jsonl``) is added to with
:func:`append_text`. Caches live under :func:`cache_dir`.

Output goes only to a regular file or a new name (missing directories above it are created, as
long as the nearest existing one is a directory); anything else
(a device such as ``/dev/null``, a FIFO, a socket, a symbolic link, a directory) is refused
with a one-line :class:`~sftlab.errors.UsageError` instead of being replaced (where a whole run
may be written: ``sftlab.run_dir``).

Every file sftlab did not just write is opened with :func:`open_input` (or read whole with
:func:`read_input`): it must be a regular file (a FIFO only where a data stream is documented,
``stream=True``), is read only up to the size it had when opened (a file appended to while it is
read ends there), and a whole-file read has a size limit. While a command runs
(:func:`inputs_scope`), every regular file it read is remembered by device and inode, and
:func:`check_output_file` refuses to write over one of them, whatever the path (a symbolic link
to a directory, a hard link): a command never replaces its own input.

Config and policy files go through :func:`read_input` too, parsed with the limits of
``sftlab.yaml_input``.

This module imports nothing from sftlab but the errors, so every stage may use it.

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> p = write_atomic(os.path.join(d, "a.txt"), "hello\\n")
    >>> p.read_text(), oct(p.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    ('hello\\n', True)
    >>> write_atomic("/dev/null", "x")
    Traceback (most recent call last):
    ...
    sftlab.errors.UsageError: /dev/null: is a character device, not a regular file; sftlab would replace it: give a path to a regular file or a new name
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sftlab.errors import UsageError

FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))



def cache_dir(kind: str) -> Path:
    """Where sftlab caches one kind of thing (``prepared`` stores, ``models`` converted from
    GGUF, ``generations``): ``$SFTLAB_CACHE/KIND`` when that is set, else
    ``~/.cache/sftlab/KIND``. Every cache goes through here, so one variable moves them all.

        >>> import os; os.environ["SFTLAB_CACHE"] = "/tmp/c"
        >>> str(cache_dir("prepared"))
        '/tmp/c/prepared'
        >>> del os.environ["SFTLAB_CACHE"]
    """
    root = os.environ.get("SFTLAB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sftlab") / kind


def current_umask() -> int:
    """The process's umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symbolic link loop"
    if e.errno == errno.ENOTDIR:
        return "a path that lies under a file, not a directory"
    if e.errno == errno.ENAMETOOLONG:
        return "a name that is too long"
    return e.strerror or str(e)


def check_output_file(path: str | os.PathLike, *, what: str = "", own: bool = False) -> Path:
    """``path`` if sftlab may replace it: a regular file, or a new name in an existing directory.

    Raises ``UsageError`` naming ``path`` (and ``what``, e.g. ``--out``) for a symbolic link, a
    device, a FIFO, a socket, a directory, a parent that is missing or not a directory, or one
    of the running command's inputs (unless ``own``: a run's own state, such as its manifest,
    which a command reads and updates by design).
    """
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        check_ancestors(p, label)
        return p
    except OSError as e:
        raise UsageError(f"{label}: cannot be written: {os_reason(e)}") from None
    if not own and _inputs is not None and _is_input((st.st_dev, st.st_ino)):
        raise UsageError(f"{label}: is one of this command's inputs (the file read as "
                         f"{_inputs[st.st_dev, st.st_ino]}); sftlab never writes over what it reads: "
                         "give another path")
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{label}: is a symbolic link; sftlab replaces files and does not write "
                         "through links: give the link's target or a new name")
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{label}: is a directory; give a file path")
    for test, kind in FILE_KINDS:
        if test(st.st_mode):
            raise UsageError(f"{label}: is {kind}, not a regular file; sftlab would replace it: "
                             "give a path to a regular file or a new name")
    return p


# (st_dev, st_ino) -> path of each regular file read while a command runs (None: not recording).
_inputs: dict[tuple[int, int], str] | None = None


def _is_input(key: tuple[int, int]) -> bool:
    """Whether the file ``key`` (device, inode) is still one the command read: its path must
    still name it. An input replaced since (a run's manifest rewritten atomically) freed its inode,
    which a new file may then get: that file is not the input."""
    path = _inputs.get(key) if _inputs is not None else None
    if path is None:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == key


@contextlib.contextmanager
def inputs_scope() -> Iterator[None]:
    """Remember the files read by :func:`open_input` until the block ends, so that
    :func:`check_output_file` refuses to replace any of them (the CLI runs each command in one)."""
    global _inputs
    saved, _inputs = _inputs, {}
    try:
        yield
    finally:
        _inputs = saved


def open_input(path: str | os.PathLike, *, what: str = "", stream: bool = False,
               note: bool = True) -> IO[bytes]:
    """``path`` opened for reading bytes, or a one-line ``UsageError`` naming it and why not.

    Only a regular file is opened (and then read no further than the size it has now, so a file
    that another program keeps appending to ends), or, with ``stream``, a FIFO or pipe (a data
    stream, read to its end). A device (``/dev/zero``), a socket or a directory is refused
    before anything is read. ``note``: remember the file as an input of the running command
    (``False`` for a run's own state, which the command rewrites).
    """
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except OSError as e:
        raise UsageError(f"{label}: cannot read: {os_reason(e)}") from None
    fifo = stat.S_ISFIFO(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{label}: is a directory; give a file")
    if not (stat.S_ISREG(st.st_mode) or (stream and fifo)):
        kind = next((k for test, k in FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise UsageError(f"{label}: is {kind}, not a regular file; sftlab reads {what or 'it'} from a "
                         "file" + (" or a pipe" if stream else ""))
    try:
        raw = open(p, "rb", buffering=0)
    except OSError as e:
        raise UsageError(f"{label}: cannot read: {os_reason(e)}") from None
    if fifo:
        return io.BufferedReader(raw)
    if note and _inputs is not None:
        _inputs[st.st_dev, st.st_ino] = str(p)
    return io.BufferedReader(_Bounded(raw, os.fstat(raw.fileno()).st_size), buffer_size=1 << 16)


def read_input(path: str | os.PathLike, *, what: str = "", max_bytes: int = 64 << 20,
               note: bool = True) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_input`); a file over ``max_bytes``
    is refused with one line instead of being read."""
    with open_input(path, what=what, note=note) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        label = f"{what} {path}" if what else str(path)
        raise UsageError(f"{label}: larger than {max_bytes:,} bytes, more than a file of this kind "
                         "holds; give the right file")
    return data


class _Bounded(io.RawIOBase):
    """A raw file read no further than ``end`` bytes (its size when opened)."""

    def __init__(self, raw: Any, end: int):
        self._raw, self._end = raw, end

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._end - self._raw.tell())
        return self._raw.readinto(memoryview(b)[:n]) if n > 0 else 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()


def check_ancestors(p: Path, label: str) -> None:
    """The nearest existing ancestor of the new path ``p`` must be a directory (missing ones
    between are created when writing)."""
    for parent in p.parents:
        try:
            pst = os.stat(parent)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise UsageError(f"{label}: cannot be created: {os_reason(e)}") from None
        if not stat.S_ISDIR(pst.st_mode):
            raise UsageError(f"{label}: lies under {parent}, which is not a directory; give a path "
                             "inside a directory")
        return


def _new_mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", *, what: str = "",
                own: bool = False) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. A full disk
    or a read-only directory becomes a ``UsageError`` naming ``path``.
    """
    p = check_output_file(path, what=what, own=own)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise UsageError(f"{p}: cannot write: {os_reason(e)}") from None
    try:
        os.fchmod(fd, _new_mode(p))  # mkstemp makes 0600; give the user's normal mode
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
            raise UsageError(f"{p}: cannot write: {os_reason(e)}; the previous file (if any) is "
                             "unchanged") from None
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes, *, what: str = "",
                 own: bool = False) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns the path."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w", what=what, own=own) as fh:
        fh.write(data)
    return Path(path)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Add ``text`` (whole lines) to the end of a log sftlab grows as it works (``metrics.jsonl``):
    the one appender, beside the atomic writers, with the same checks on where output may go (the
    log is the run's own, so it may have been read). A crash can tear only the last line, which
    the log's readers skip and say so."""
    with open(check_output_file(path, own=True), "a", encoding="utf-8") as f:
        f.write(text)


def publish_dir(tmp: Path, final: Path, *, first_wins: bool = False) -> Path:
    """Give the directory ``tmp`` and every file under it the user's normal mode (``mkdtemp``
    makes ``0700``, libraries such as safetensors write ``0600``), flush it all to disk, then
    rename ``tmp`` to ``final``: every directory sftlab builds whole is published here.

    ``first_wins`` (a cache entry two processes may build at once, both whole): a ``final``
    that already exists is kept and ``tmp`` removed, so no reader of it ever sees it move.
    Otherwise an existing ``final`` is replaced (``replace_dir``).

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for who in ("first", "second"):
        ...     tmp = root / f".tmp-{who}"; tmp.mkdir(); _ = (tmp / "who").write_text(who)
        ...     _ = publish_dir(tmp, root / "entry", first_wins=True)
        >>> (root / "entry" / "who").read_text(), sorted(p.name for p in root.iterdir())
        ('first', ['entry'])
    """
    os.chmod(tmp, 0o777 & ~current_umask())
    normal_modes(tmp, sync=True)
    if not first_wins:
        replace_dir(tmp, final)
        return final
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # not a lost race: a real failure
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        _fsync_dir(final.parent)
    return final


def normal_modes(root: Path, *, sync: bool = False) -> None:
    """Give every file under ``root`` the mode ``0666`` less the umask (and flush it, ``sync``)."""
    mode = 0o666 & ~current_umask()
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)
            if sync:
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
    if sync:
        _fsync_dir(root)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the directory ``tmp`` to ``final``; an existing ``final`` is moved aside, then removed.

    A symbolic link or a non-directory at ``final`` is refused, never replaced.
    """
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise UsageError(f"{final}: exists and is not a directory sftlab wrote; move it away")
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


def check_cache_dir(path: str | os.PathLike, *, what: str = "cache") -> Path:
    """``path`` as a cache directory sftlab can write: an existing directory (or a link to one)
    or a new one, created here. A FIFO, a device, a file, a dangling link, a link loop or a
    directory that cannot hold new files (``/proc/self``, a read-only mount) is one line naming
    ``what`` and the path.
    """
    p = Path(path)
    label = f"{what}={p}"
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise UsageError(f"{label}: is a symbolic link to {os.readlink(p)}, which does not exist; "
                             "give a directory") from None
        check_ancestors(p, label)
        st = None
    except OSError as e:
        raise UsageError(f"{label}: cannot be used as a directory: {os_reason(e)}") from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        kind = next((k for test, k in FILE_KINDS if test(st.st_mode)), "a file")
        raise UsageError(f"{label}: is {kind}, not a directory; give a directory for the cache")
    try:
        p.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=p))
    except OSError as e:
        raise UsageError(f"{label}: cannot hold new files: {no_room(e) or os_reason(e)}; "
                         "give a writable directory") from None
    return p


# errno of a write that failed for want of room: no space, over quota, over the file size limit,
# a read-only filesystem. safetensors reports them as "(os error N)" in its own error type.
_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "over the disk quota",
            errno.EFBIG: "over the file size limit", errno.EROFS: "a read-only filesystem"}


def no_room(e: BaseException | None) -> str | None:
    """Why a write failed for want of room (``e`` or an exception it was raised from), or ``None``.

    >>> no_room(OSError(errno.ENOSPC, "No space left on device")), no_room(ValueError("x"))
    ('no space left on the device', None)
    """
    while e is not None:
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return _NO_ROOM[e.errno]
        if isinstance(e, OSError) and e.errno is None and re.search(r"\d+ requested and \d+ written", str(e)):
            return "the disk took only part of a write (full, or over a file size limit)"  # numpy's tofile
        found = re.search(r"os error (\d+)", str(e)) if type(e).__name__ == "SafetensorError" else None
        if found and int(found.group(1)) in _NO_ROOM:
            return _NO_ROOM[int(found.group(1))]
        e = e.__cause__ or e.__context__
    return None


def room_message(where: Path, reason: str, need: int, kept: str) -> str:
    """One line: ``where`` cannot be written for ``reason``, the room it needs (``need`` bytes,
    about), the room there is, and what is whole (``kept``)."""
    try:
        free = f"{_size(shutil.disk_usage(next(p for p in (where, *where.parents) if p.exists())).free)} free there"
    except (OSError, StopIteration):
        free = "free space unknown"
    return (f"{where}: cannot write it: {reason}; it needs about {_size(need)} ({free}); nothing "
            f"partial is left and {kept}: make room, then run again")


def _size(n: int) -> str:
    """``n`` bytes for people: ``12.0 KiB``, ``3.5 MiB``, ``1.2 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 2**10:,.1f} KiB"


class whole_or_nothing:
    """``with whole_or_nothing(tmp, final, need, previous):`` around the writes of a directory that
    is renamed into place when whole (``publish_dir``): on any failure the partial ``tmp`` is
    removed; a failure for want of room (``no_room``) becomes a one-line ``UsageError`` naming
    ``final``, the room it needs (``need()`` bytes) and the room there is, and saying that
    ``previous`` (or whatever ``final`` was) is whole."""

    def __init__(self, tmp: Path, final: Path, need, previous: Path | None = None):
        self.tmp, self.final, self.need, self.previous = tmp, final, need, previous

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb) -> bool:
        if e is None:
            return False
        shutil.rmtree(self.tmp, ignore_errors=True)
        reason = no_room(e)
        if reason is None:
            return False
        kept = f"{self.previous} is whole" if self.previous else "nothing earlier was changed"
        raise UsageError(room_message(self.final, reason, self.need(), kept)) from None
