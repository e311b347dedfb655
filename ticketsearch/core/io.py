"""Atomic file writes: write a temporary file beside the target, fsync, rename.

A crash leaves either the old file or the new one, never half a file; every result file in ticketsearch
goes through here. A kill -9 between creating the temporary file and the rename leaves a ``.<name>.*.tmp``
file behind; :func:`remove_stale_temps` clears them. Failed writes surface as one-line
:class:`~ticketsearch.core.errors.StorageError` messages naming the file, never as half-written results.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, StorageError, TicketsearchError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "append_jsonl",
    "read_jsonl",
    "json_kind",
    "current_umask",
    "is_atomic_temp",
    "remove_stale_temps",
    "storage_error",
    "expand_path",
    "blocking_file",
    "atomic_write_csv",
]

# mkstemp names: prefix ".<target name>.", 8 characters from [a-z0-9_], suffix ".tmp"
_TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
}
# Writers that do their own I/O (torch.save's zip writer, safetensors' Rust code) do not raise OSError;
# these are the words their messages carry for the errors above.
_MESSAGE_ERRNOS = (
    ("no space left on device", errno.ENOSPC),
    ("os error 28", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("os error 122", errno.EDQUOT),
    ("read-only file system", errno.EROFS),
    ("os error 30", errno.EROFS),
)
_LOW_SPACE = 1 << 20  # bytes: below this, a failed write is taken to be a full disk

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, which races with files other threads create meanwhile;
    Linux reports it in ``/proc/self/status``, so the racy fallback is only used elsewhere.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        old = os.umask(0o022)
        os.umask(old)
    return old


def expand_path(path: str | os.PathLike[str], *, what: str = "path") -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; one-line ConfigError if that cannot be done.

    ``Path.expanduser`` raises a bare RuntimeError for an unknown user (or no $HOME), which would reach
    the user as a traceback; ``what`` names the setting in the message ("results root", "data root").
    """
    p = Path(path)
    try:
        return p.expanduser()
    except RuntimeError:
        head = str(path).split(os.sep, 1)[0]
        why = (
            f"there is no user '{head[1:]}'"
            if len(head) > 1
            else "the home directory is unknown ($HOME unset)"
        )
        raise ConfigError(f"{what} '{path}': cannot expand '{head}': {why}") from None


def blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) that is not a folder, if any."""
    for p in (path, *path.parents):
        try:
            if p.exists():
                return None if p.is_dir() else p
        except OSError:
            return None
    return None


def storage_error(
    exc: BaseException, path: Path, *, doing: str = "writing", folder: bool = False
) -> StorageError | None:
    """The one-line error for ``exc`` raised while ``doing`` ``path``, or None if it is not a storage error.

    ``folder=True`` when ``path`` is a folder being created (then ``path`` itself may be the file in the
    way). Exported so other writers (lock files, run folders) word the same failures the same way.
    """
    code: int | None = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        text = str(exc).lower()
        code = next((c for words, c in _MESSAGE_ERRNOS if words in text), None)
    if code is None and not isinstance(exc, OSError):
        return None
    if folder:
        doing = "creating folder"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        blocker = None if code == errno.EISDIR else blocking_file(path if folder else path.parent)
        if code == errno.EISDIR and not folder:
            reason = "it is a folder"
        elif blocker is not None:
            reason = f"'{blocker}' is a file, not a folder; move it away"
        if blocker is not None and blocker == path:
            msg = f"'{path}' is a file where a folder should be; move it away"
        else:
            msg = f"{doing} '{path}' failed: {reason}"
    elif code in _REASONS:
        msg = f"{_REASONS[code]} {doing} '{path}'"
        if code in (errno.ENOSPC, errno.EDQUOT):
            msg += "; free some space and try again"
    else:
        msg = f"{doing} '{path}' failed: {reason}"
    err = StorageError(msg)
    err.errno = code
    return err


def _looks_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < _LOW_SPACE


def _release_frames(exc: BaseException) -> None:
    """Drop the locals of the frames ``exc`` (and what it chained) passed through.

    A writer that failed mid-file may still hold the file open from one of those frames (torch.save's
    C++ writer does); the temporary file we unlink would then keep its disk space until a garbage
    collection, on the disk that just ran full.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__


def atomic_write(path: str | os.PathLike[str], writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` then move ``tmp_path`` onto ``path`` atomically.

    The file gets the permissions of a plain ``open()`` (``0o666 & ~umask``), not mkstemp's 0600, so a
    shared results folder stays readable by the group. Storage failures (full disk, quota, read-only file
    system, a folder on the way that is a file) raise :class:`StorageError` and leave no temporary file.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        writer(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        err: StorageError | None = None
        if isinstance(exc, Exception) and not isinstance(exc, TicketsearchError):
            err = storage_error(exc, path)
            # the temporary file still holds its blocks here, so a full disk still looks full
            if err is None and tmp is not None and not isinstance(exc, OSError) and _looks_full(path.parent):
                err = storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
        if err is not None:
            _release_frames(exc)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if err is None:
            raise
        raise err from exc
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def is_atomic_temp(name: str) -> bool:
    """True for a name :func:`atomic_write` gives its temporary files (``.<target>.<8 chars>.tmp``)."""
    return bool(_TEMP_RE.match(name))


def remove_stale_temps(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write` left in ``folder``; returns what went.

    Only safe while no other process writes there (a live writer's temporary file looks the same), so
    call it under the lock of whatever owns the folder. A missing folder has nothing to clean.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, _dirs, files in walker:
        for name in files:
            if is_atomic_temp(name):
                p = Path(dirpath) / name
                try:
                    if p.is_file() and not p.is_symlink():
                        p.unlink()
                        removed.append(p)
                except FileNotFoundError:
                    pass
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, w)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_csv(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """A table of dicts (the first row's keys are the columns) as CSV, written atomically."""
    import csv
    import io

    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record; a torn last line (crash mid-append) is skipped by :func:`read_jsonl`.

    A write that fails (full disk) is cut back to the previous end of file, so the next append does not
    glue its record onto a torn line and lose both.
    """
    path = Path(path)
    data = (json.dumps(record, sort_keys=True, default=_json_default) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data  # a crash tore the last line: end it so this record stays readable
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                try:
                    os.ftruncate(fd, start)  # drop whatever part of the line reached the file
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        err = storage_error(exc, path)
        if err is None:  # pragma: no cover - every OSError maps
            raise
        raise err from exc


def json_kind(value: Any) -> str:
    """JSON's name for the type of a decoded value, for messages about files that hold the wrong thing."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    kinds: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return kinds.get(type(value), type(value).__name__)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``path``; lines a crash tore (bad JSON, cut UTF-8, not an object) are skipped."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
