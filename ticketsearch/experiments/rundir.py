"""Run directories keyed by the hparam hash: ``root/<method>_<hash>/replicate_<seed>/level_<k>/``.

Every file is written atomically. A level is finished when its ``result.json`` exists (written last), and a
finished level is never recomputed. ``checkpoint.pt`` holds the state of a level in progress and is removed
once the level is finished (its final weights stay in ``model_final.safetensors``).

One process works on a replicate at a time: :meth:`RunDir.lock` holds ``<run>/.replicate_<seed>.lock``
(beside the replicate, not in it: a run that only reads finished levels changes nothing inside them). Under
the lock, :meth:`RunDir.clean_stale_temps` removes the temporary files a killed writer left behind.

In a torchrun world only rank 0 touches the directory: every read and write of :class:`RunDir` and
:class:`LevelDir` runs on rank 0 (``World.on_main``) and the other ranks receive its answer, so they never
read a half-written file and the nodes need not share a file system. Only rank 0 takes the lock.

Every ``result.json`` carries the ``provenance`` of the code that wrote it (``core.provenance``: package
version, git commit and dirty state, torch version, device). Reading a finished level back notes it with
:func:`~ticketsearch.core.provenance.note_reuse`, so a report can list the results made by other code, and
:meth:`RunDir.drop_stale` removes them (and every later level) under the lock for ``--rerun-stale``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, DataError, RunLockedError
from ..core.hparams import RunHparams
from ..core.io import (
    append_jsonl,
    atomic_write,
    atomic_write_json,
    blocking_file,
    expand_path,
    json_kind,
    read_jsonl,
    remove_stale_temps,
    storage_error,
)
from ..core.mask import Mask
from ..core.provenance import for_device, note_reuse, stale_reason
from ..training.distributed import SINGLE, World

__all__ = ["RunDir", "LevelDir", "save_state", "load_state", "check_writable", "lock_name"]


def lock_name(seed: int) -> str:
    return f".replicate_{seed}.lock"


def check_writable(root: str | os.PathLike[str]) -> None:
    """Fail early, in one line, if results cannot be written under ``root``."""
    root = expand_path(root, what="results root")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        blocker = blocking_file(root)
        why = f"'{blocker}' is a file, not a folder" if blocker is not None else (exc.strerror or str(exc))
        raise ConfigError(f"results root '{root}' is not writable ({why}); choose another --root") from None


def _make_dir(path: Path) -> Path:
    """``mkdir -p`` whose failures (a file where a folder should be, no space) read as one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err = storage_error(exc, path, folder=True)
        raise (err if err is not None else exc) from None
    return path


def save_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A model state as safetensors (no pickle): init, rewind point and final weights."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_state(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # corrupt file → one line
        raise DataError(f"cannot read model state '{path}': {exc}") from None


class LevelDir:
    def __init__(self, path: Path, world: World = SINGLE, device: Any = None) -> None:
        """``device``: where this level's results are computed, recorded in their provenance."""
        self.path = path
        self.world = world
        self.device = device

    def _main(self, what: str, fn: Any) -> Any:
        """``fn()`` on rank 0 only, its answer on every rank (in one process: just ``fn()``)."""
        return self.world.on_main(f"{what} {self.path.name}", fn)

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    @property
    def mask_path(self) -> Path:
        return self.path / "mask.safetensors"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def final_path(self) -> Path:
        return self.path / "model_final.safetensors"

    def done(self) -> bool:
        return bool(self._main("done", self.result_path.is_file))

    def has_mask(self) -> bool:
        """A mask was stored (a level scored before a crash reuses it)."""
        return bool(self._main("has_mask", self.mask_path.is_file))

    def result(self) -> dict[str, Any]:
        """The finished level's result, read back instead of recomputed (noted for stale-reuse reports)."""
        res: dict[str, Any] = self._main("result", self._result)
        note_reuse(self.path, res)
        return res

    def _result(self) -> dict[str, Any]:
        """The finished level's result; a damaged file is named, with the way out (delete → recompute)."""
        p = self.result_path
        fix = "delete it to recompute this level"
        try:
            res = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"result file '{p}' is truncated or not valid JSON; {fix}") from None
        except OSError as exc:
            raise DataError(f"cannot read result file '{p}' ({exc.strerror or exc}); {fix}") from None
        if not isinstance(res, dict):
            raise DataError(f"result file '{p}' holds a JSON {json_kind(res)}, not an object; {fix}")
        return res

    def write_result(self, result: dict[str, Any]) -> None:
        """Write ``result.json`` (last: it marks the level finished) with the code's ``provenance``."""
        result.setdefault("provenance", for_device(self.device))

        def write() -> None:
            atomic_write_json(self.result_path, result)
            if self.checkpoint_path.exists():
                self.checkpoint_path.unlink()

        self._main("write_result", write)

    def save_mask(self, mask: Mask, **metadata: Any) -> Path:
        return self._main("save_mask", lambda: mask.save(self.mask_path, **metadata))  # type: ignore[no-any-return]

    def load_mask(self) -> Mask:
        return self._main("load_mask", lambda: Mask.load(self.mask_path))  # type: ignore[no-any-return]

    def log(self, record: dict[str, Any]) -> None:
        self._main("log", lambda: append_jsonl(self.metrics_path, record))

    def metrics(self) -> list[dict[str, Any]]:
        return self._main("metrics", lambda: read_jsonl(self.metrics_path))  # type: ignore[no-any-return]

    def reset_metrics(self, history: list[dict[str, Any]]) -> None:
        """On resume: metrics.jsonl becomes exactly the checkpoint's history (drops records past it)."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
        self._main(
            "reset_metrics",
            lambda: atomic_write(self.metrics_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8")),
        )

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self._main(
            "save_checkpoint", lambda: atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))
        )

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state of a level in progress (on the CPU), or ``None``; in a torchrun world rank 0 reads it
        and every rank resumes from the same copy."""
        return self._main("load_checkpoint", self._load_checkpoint)  # type: ignore[no-any-return]

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint we cannot read is restarted, not trusted
            return None

    def sub(self, name: str) -> LevelDir:
        """A folder inside this level (a control run), created so a file in its place fails in one line."""
        path = self.path / name
        self._main(f"mkdir {name}", lambda: _make_dir(path))
        return LevelDir(path, self.world, self.device)

    def clean_stale_temps(self) -> list[Path]:
        """Remove the ``.<name>.*.tmp`` files a killed :func:`atomic_write` left here and in sub-levels.

        Each can be as large as a checkpoint. Only safe under :meth:`RunDir.lock` of the replicate: a
        writer at work in another process has a temporary file of the same shape.
        """
        return remove_stale_temps(self.path)


class RunDir:
    """``root/<method>_<hash>/`` with ``hparams.json``; replicates and levels below it."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        hparams: RunHparams,
        *,
        identity: str | None = None,
        world: World = SINGLE,
        device: Any = None,
    ) -> None:
        """``identity``: the hash naming the run (default: of all of ``hparams``); a method whose levels do
        not depend on how far it goes (IMP) names its run without the target density. ``world``: a
        torchrun world, whose rank 0 alone touches the directory. ``device``: recorded in each result's
        provenance."""
        self.world = world
        self.device = device
        self.root = expand_path(root, what="results root")
        self.hparams = hparams
        self.identity = identity or hparams.hash()
        self.name = f"{hparams.pruning.method}_{self.identity}"
        self.path = self.root / self.name

    def create(self) -> RunDir:
        def create() -> None:
            check_writable(self.root)
            _make_dir(self.path)
            hp_path = self.path / "hparams.json"
            if not hp_path.is_file():
                atomic_write_json(hp_path, self.hparams.to_dict())

        self.world.on_main("create run", create)
        return self

    def replicate_path(self, seed: int) -> Path:
        return self.path / f"replicate_{seed}"

    def replicate(self, seed: int) -> Path:
        path = self.replicate_path(seed)
        self.world.on_main("mkdir replicate", lambda: _make_dir(path))
        return path

    def level(self, seed: int, k: int) -> LevelDir:
        path = self.replicate_path(seed) / f"level_{k}"
        self.world.on_main(f"mkdir level_{k}", lambda: _make_dir(path))
        return LevelDir(path, self.world, self.device)

    def stale_levels(self, seed: int) -> list[tuple[int, str]]:
        """``(k, reason)`` for every finished level of replicate ``seed`` made by other code (its own
        result or a control's or sub-level's inside it), lowest first."""

        def scan() -> list[tuple[int, str]]:
            out = []
            for k, level in _levels(self.replicate_path(seed)):
                for res_path in sorted(level.rglob("result.json")):
                    try:
                        res = json.loads(res_path.read_text(encoding="utf-8"))
                    except (OSError, ValueError):
                        continue  # a damaged result is reported when it is read
                    prov = res.get("provenance") if isinstance(res, dict) else None
                    why = stale_reason(prov if isinstance(prov, dict) else None)
                    if why is not None:
                        out.append((k, why))
                        break
            return out

        return self.world.on_main("scan stale", scan)  # type: ignore[no-any-return]

    def drop_stale(self, seed: int) -> list[int]:
        """Remove the first stale level of replicate ``seed`` and every level after it, so the method
        recomputes them (a later level was built from an earlier one's weights or mask); when every
        finished level is stale, the stored init and rewind point go too (other code may draw another
        init). Only under :meth:`lock`. Returns the removed level numbers."""
        stale = self.stale_levels(seed)
        if not stale:
            return []
        first = stale[0][0]
        rep = self.replicate_path(seed)

        def drop() -> list[int]:
            import shutil

            levels = _levels(rep)
            gone = [k for k, _ in levels if k >= first]
            if all(k >= first for k, p in levels if (p / "result.json").is_file()):
                for name in ("init.safetensors", "rewind.safetensors"):
                    (rep / name).unlink(missing_ok=True)
            for k, path in levels:
                if k >= first:
                    shutil.rmtree(path)
            return gone

        return self.world.on_main("drop stale", drop)  # type: ignore[no-any-return]

    def clean_stale_temps(self, seed: int) -> list[Path]:
        """Remove the temporary files killed writers left anywhere under ``replicate_<seed>/``.

        Call it right after taking :meth:`lock` for ``seed``, never without: a writer at work in another
        process has a temporary file of the same shape. Returns the removed paths (for a log line).
        """
        found = self.world.on_main("clean temps", lambda: remove_stale_temps(self.replicate_path(seed)))
        return found  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def lock(
        self, seed: int, *, wait: bool = True, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[Path]:
        """Hold replicate ``seed`` exclusively for the ``with`` block; yields the lock file's path.

        Two processes resuming the same replicate would interleave checkpoints and metrics. The lock is
        ``flock`` on ``<run>/.replicate_<seed>.lock``, so the kernel drops it when its holder dies (kill -9
        included): there are no stale locks to clear. Its content names the holder (pid and host) for the
        message. If another process holds it: ``on_wait(message)`` is called once and we block until it
        is released (``wait=True``), or :class:`RunLockedError` is raised (``wait=False``). Re-entering
        from the process that holds it is a no-op, so nested callers cannot deadlock themselves. On NFS
        the lock works only where the server supports locking (Linux maps flock to NFS locks).

        In a torchrun world rank 0 alone holds the lock, and does not wait for it: the other ranks would
        give up waiting after the process-group timeout, so a held replicate is refused on every rank.
        """
        self.replicate(seed)
        if self.world.active:
            held = contextlib.ExitStack()
            self.world.on_main(
                "lock", lambda: held.enter_context(self._flock(seed, wait=False, on_wait=None))
            )
            with held:
                yield self.path / lock_name(seed)
            return
        with self._flock(seed, wait=wait, on_wait=on_wait) as path:
            yield path

    @contextlib.contextmanager
    def _flock(self, seed: int, *, wait: bool, on_wait: Callable[[str], None] | None) -> Iterator[Path]:
        path = self.path / lock_name(seed)
        key = os.path.realpath(path)
        with _HELD_GUARD:
            nested = key in _HELD
            if nested:
                _HELD[key] += 1
        if nested:
            try:
                yield path
            finally:
                with _HELD_GUARD:
                    _HELD[key] -= 1
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            err = storage_error(exc, path, doing="opening lock file")
            raise (err if err is not None else exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                msg = f"replicate {seed} of '{self.path}' is in use by {_holder(fd)}"
                if not wait:
                    raise RunLockedError(f"{msg}; wait for it to finish or stop it") from None
                if on_wait is not None:
                    on_wait(f"{msg}; waiting for it to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
            _write_holder(fd)
            with _HELD_GUARD:
                _HELD[key] = 1
            try:
                yield path
            finally:
                with _HELD_GUARD:
                    del _HELD[key]
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # a later reader must not name a process that let go
        finally:
            os.close(fd)  # releases the flock


def _levels(replicate: Path) -> list[tuple[int, Path]]:
    """``(k, path)`` of every ``level_<k>`` folder of a replicate, by ``k``."""
    out = []
    for p in replicate.glob("level_*"):
        tail = p.name[len("level_") :]
        if p.is_dir() and tail.isdigit():
            out.append((int(tail), p))
    return sorted(out)


_HELD: dict[str, int] = {}  # lock files this process holds → nesting depth
_HELD_GUARD = threading.Lock()


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data = (json.dumps(info) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:  # the lock holds without the note; only the waiting message gets vaguer
        pass


def _holder(fd: int) -> str:
    """Who holds the lock, from the note it wrote; retried briefly since a fresh holder writes it late."""
    for _ in range(10):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            pid, host = int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
            continue
        where = "this machine" if host == socket.gethostname() else f"host '{host}'"
        since = f", since {info['since']}" if info.get("since") else ""
        return f"process {pid} on {where}{since}"
    return "another process"
