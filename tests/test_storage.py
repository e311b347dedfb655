"""The storage layer under failure: locks between real processes, killed writers, full disks, damaged files.

Every failure a user can meet here must end as one line naming the file, and never as a silently wrong
result.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ticketsearch.core.errors import (
    ConfigError,
    DataError,
    RunLockedError,
    StorageError,
    TicketsearchError,
)
from ticketsearch.core.hparams import RunHparams
from ticketsearch.core.io import (
    append_jsonl,
    atomic_write,
    atomic_write_bytes,
    current_umask,
    is_atomic_temp,
    read_jsonl,
    remove_stale_temps,
)
from ticketsearch.core.mask import Mask, layer_seed
from ticketsearch.experiments.rundir import (
    LevelDir,
    RunDir,
    check_writable,
    load_state,
    lock_name,
    save_state,
)

REPO = Path(__file__).resolve().parents[1]


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg, msg
    return msg


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_atomic_temp(p.name)]


# -- seeded shuffles do not depend on dict order -------------------------------------------------------
def _mask() -> Mask:
    g = torch.Generator().manual_seed(0)
    names = ["fc2.weight", "conv1.weight", "fc1.weight"]  # not alphabetical, like a model's order
    shapes = [(10, 30), (4, 1, 3, 3), (30, 20)]
    return Mask({n: torch.rand(s, generator=g) < 0.3 for n, s in zip(names, shapes)})


def test_shuffle_is_independent_of_dict_order() -> None:
    m = _mask()
    rev = Mask({n: m[n] for n in reversed(list(m))})
    assert list(rev) != list(m)
    a, b = m.shuffled(7), rev.shuffled(7)
    assert a.equals(b)
    assert a.layer_counts() == m.layer_counts() and not a.equals(m)
    assert not m.shuffled(8).equals(a)
    assert a.metadata["control"] == "layerwise_shuffle" and a.metadata["shuffle_seed"] == 7
    # a layer's shuffle depends on its own name and the seed only: drop a layer, the others stay
    sub = Mask({n: m[n] for n in list(m)[1:]})
    assert all(torch.equal(sub.shuffled(7)[n], a[n]) for n in sub)


def test_shuffle_same_after_save_and_load(tmp_path: Path) -> None:
    m = _mask()
    loaded = Mask.load(m.save(tmp_path / "m.safetensors"))
    assert loaded.equals(m)
    assert loaded.shuffled(3).equals(m.shuffled(3))


def test_shuffle_generator_argument_is_order_independent() -> None:
    m = _mask()
    rev = Mask({n: m[n] for n in reversed(list(m))})
    a = m.shuffled(torch.Generator().manual_seed(5))
    assert a.equals(rev.shuffled(torch.Generator().manual_seed(5)))
    assert a.layer_counts() == m.layer_counts()
    with pytest.raises(TypeError):
        m.shuffled(1.5)  # type: ignore[arg-type]


def test_layer_seed_is_stable() -> None:
    # pinned: a change here silently changes every stored random_mask control
    assert layer_seed(0, "fc1.weight") == layer_seed(0, "fc1.weight")
    assert layer_seed(0, "fc1.weight") != layer_seed(1, "fc1.weight")
    assert layer_seed(0, "fc1.weight") != layer_seed(0, "fc2.weight")
    assert 0 <= layer_seed(2**70, "x") < 2**63
    oracle = int.from_bytes(hashlib.sha256(b"1:a").digest()[:8], "big") & (2**63 - 1)
    assert layer_seed(1, "a") == oracle == 4711607286779601954


# -- one process per replicate --------------------------------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ticketsearch.core.hparams import RunHparams
    from ticketsearch.experiments.rundir import RunDir
    root, release = sys.argv[1], Path(sys.argv[2])
    run = RunDir(root, RunHparams()).create()
    with run.lock(0):
        print("locked", flush=True)
        while not release.exists():
            time.sleep(0.02)
    print("released", flush=True)
    """
)

_WAITER = textwrap.dedent(
    """
    import sys, time
    from ticketsearch.core.errors import RunLockedError
    from ticketsearch.core.hparams import RunHparams
    from ticketsearch.experiments.rundir import RunDir
    root, wait = sys.argv[1], sys.argv[2] == "wait"
    run = RunDir(root, RunHparams()).create()
    try:
        with run.lock(0, wait=wait, on_wait=lambda m: print("waiting:", m, flush=True)):
            print("got it", time.time(), flush=True)
    except RunLockedError as exc:
        print("locked out:", exc, flush=True)
        sys.exit(3)
    """
)


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    release = tmp_path / "release"
    p = _spawn(_HOLDER, str(tmp_path / "runs"), str(release))
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "locked", p.stderr.read() if p.stderr else ""
        yield p, release
    finally:
        release.touch()
        if p.poll() is None:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def test_lock_second_process_waits_until_first_releases(
    tmp_path: Path, holder: tuple[subprocess.Popen[str], Path]
) -> None:
    first, release = holder
    second = _spawn(_WAITER, str(tmp_path / "runs"), "wait")
    assert second.stdout is not None
    line = second.stdout.readline()  # the waiting message comes before the lock is free
    assert line.startswith("waiting:"), line + (second.stderr.read() if second.stderr else "")
    assert f"process {first.pid} on this machine" in line and "replicate 0" in line
    time.sleep(0.5)
    assert second.poll() is None  # still blocked
    released_at = time.time()
    release.touch()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.startswith("got it"), out
    assert float(out.split()[2]) >= released_at
    assert first.wait(timeout=60) == 0


def test_lock_no_wait_names_the_holder(tmp_path: Path, holder: tuple[subprocess.Popen[str], Path]) -> None:
    first, _ = holder
    second = _spawn(_WAITER, str(tmp_path / "runs"), "nowait")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 3, out + err
    assert out.startswith("locked out:") and f"process {first.pid} on this machine" in out
    assert "waiting" not in out


def test_lock_is_freed_by_kill_9_and_reentrant(tmp_path: Path) -> None:
    release = tmp_path / "release"
    p = _spawn(_HOLDER, str(tmp_path / "runs"), str(release))
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    run = RunDir(tmp_path / "runs", RunHparams()).create()
    with pytest.raises(RunLockedError, match=f"process {p.pid}"):
        with run.lock(0, wait=False):
            pass
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    calls: list[str] = []
    with run.lock(0, wait=False, on_wait=calls.append) as lock_path:
        info = json.loads(lock_path.read_text())
        assert info["pid"] == os.getpid() and info["host"]
        with run.lock(0, wait=False):  # the same process again: no self-deadlock
            pass
        assert lock_path.read_text()  # still ours after the inner block
    assert calls == []
    assert lock_path.read_text() == ""  # released: no stale holder named
    assert issubclass(RunLockedError, TicketsearchError)


# -- temporary files of killed writers ----------------------------------------------------------------
_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from ticketsearch.core.io import atomic_write
    def writer(tmp):
        with open(tmp, "wb") as f:
            f.write(b"x" * 100000)
        os.kill(os.getpid(), signal.SIGKILL)
    atomic_write(sys.argv[1], writer)
    """
)


def test_clean_stale_temps_after_kill_9(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "runs", RunHparams()).create()
    level = run.level(0, 1)
    level.write_result({"acc": 0.5})
    ctrl = level.sub("control_reinit")
    for target in (level.checkpoint_path, ctrl.checkpoint_path, run.replicate(0) / "init.safetensors"):
        p = _spawn(_KILLED_WRITER, str(target))
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL
    left = _temps(run.replicate_path(0))
    assert len(left) == 3 and all(t.stat().st_size == 100000 for t in left)
    assert any(t.name.startswith(".checkpoint.pt.") for t in left)
    keep = [level.path / ".hidden", level.path / "notes.tmp", level.path / ".x.tmp", level.result_path]
    for k in keep[:3]:
        k.write_text("keep")

    with run.lock(0):
        assert sorted(level.clean_stale_temps()) == sorted(t for t in left if level.path in t.parents)
        removed = run.clean_stale_temps(0)
    assert [t.name for t in removed] == [".init.safetensors." + removed[0].name.split(".")[-2] + ".tmp"]
    assert _temps(run.path) == []
    assert all(k.exists() for k in keep) and (run.path / lock_name(0)).exists()
    res = level.result()
    assert {"ticketsearch", "git_commit", "git_dirty", "torch", "device"} <= set(res.pop("provenance"))
    assert res == {"acc": 0.5}
    assert run.clean_stale_temps(5) == [] and remove_stale_temps(tmp_path / "nowhere") == []


# -- permissions follow the umask ---------------------------------------------------------------------
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_respects_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        f = atomic_write_bytes(tmp_path / "a.bin", b"x")
        m = _mask().save(tmp_path / "m.safetensors")
        s = save_state(tmp_path / "s.safetensors", {"w": torch.zeros(2)})
        LevelDir(tmp_path / "lvl").save_checkpoint({"it": 1})
    finally:
        os.umask(old)
    for p in (f, m, m.with_suffix(".json"), s, tmp_path / "lvl" / "checkpoint.pt"):
        assert p.stat().st_mode & 0o777 == mode, p


# -- one-line errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EROFS, "read-only file system"),
    ],
)
def test_write_errors_are_one_line_and_leave_no_temp(tmp_path: Path, code: int, words: str) -> None:
    def writer(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError(code, os.strerror(code))

    target = tmp_path / "level_1" / "checkpoint.pt"
    with pytest.raises(StorageError) as e:
        atomic_write(target, writer)
    msg = _one_line(e.value)
    assert msg.startswith(words) and f"'{target}'" in msg
    assert e.value.errno == code and isinstance(e.value, OSError)
    assert os.listdir(target.parent) == []


def test_non_os_writer_error_naming_a_full_disk(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    def writer(tmp: str) -> None:  # what safetensors raises on ENOSPC
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(StorageError, match=r"^no space left on device writing '.*m\.safetensors'"):
        atomic_write(tmp_path / "m.safetensors", writer)
    assert os.listdir(tmp_path) == []

    def bug(tmp: str) -> None:
        raise KeyError("a bug, not the disk")

    with pytest.raises(KeyError):  # anything else keeps its traceback
        atomic_write(tmp_path / "x", bug)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs (needs root and mount); skipped where it cannot be made."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def test_real_full_disk(tiny_fs: Path) -> None:
    level = LevelDir(tiny_fs / "level_1")
    big = {"w": torch.zeros(200_000)}  # 800 KB: more than the file system holds
    empty = _free(tiny_fs)
    gc.disable()  # the space must come back at once, not at the next garbage collection
    try:
        with pytest.raises(StorageError, match=r"^no space left on device writing '.*checkpoint\.pt'"):
            level.save_checkpoint({"model": big})  # torch.save reports ENOSPC as an opaque RuntimeError
        assert _free(tiny_fs) >= empty - 8192  # the writer's open handle on the deleted temp is gone
        with pytest.raises(StorageError, match=r"^no space left on device writing '.*final\.safetensors'"):
            save_state(level.final_path, big)
        assert _free(tiny_fs) >= empty - 8192
    finally:
        gc.enable()
    assert _temps(tiny_fs) == []

    level.log({"it": 1})
    filler = tiny_fs / "filler"
    with pytest.raises(OSError):
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    with pytest.raises(StorageError, match=r"^no space left on device writing '.*metrics\.jsonl'"):
        for i in range(1000):  # the page the file already has absorbs a few records
            level.log({"it": 2 + i, "pad": "x" * 3000})
    filler.unlink()
    level.log({"it": -1})
    recs = level.metrics()
    assert recs[0] == {"it": 1} and recs[-1] == {"it": -1}
    assert [r["it"] for r in recs[1:-1]] == list(range(2, 2 + len(recs) - 2))  # no record lost or torn


def test_append_jsonl_ends_a_torn_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    append_jsonl(p, {"a": 1})
    with open(p, "a") as f:
        f.write('{"a": 2, "b"')  # a crash mid-append
    append_jsonl(p, {"a": 3})
    assert read_jsonl(p) == [{"a": 1}, {"a": 3}]


def test_append_jsonl_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "level_1").write_text("a file")
    with pytest.raises(StorageError) as e:
        append_jsonl(tmp_path / "level_1" / "metrics.jsonl", {"a": 1})
    assert f"'{tmp_path / 'level_1'}' is a file, not a folder" in _one_line(e.value)


@pytest.mark.parametrize("where", ["run", "replicate", "level", "control"])
def test_run_dir_path_taken_by_a_file(tmp_path: Path, where: str) -> None:
    run = RunDir(tmp_path / "runs", RunHparams())
    blocked = {
        "run": run.path,
        "replicate": run.path / "replicate_0",
        "level": run.path / "replicate_0" / "level_1",
        "control": run.path / "replicate_0" / "level_1" / "control_reinit",
    }[where]
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("in the way")
    with pytest.raises(StorageError) as e:
        run.create().level(0, 1).sub("control_reinit")
    msg = _one_line(e.value)
    assert f"'{blocked}' is a file" in msg and "move it away" in msg


def test_results_root_errors(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for root in (tmp_path / "f", tmp_path / "f" / "runs"):
        with pytest.raises(ConfigError) as e:
            check_writable(root)
        assert f"'{tmp_path / 'f'}' is a file, not a folder" in _one_line(e.value)
    with pytest.raises(ConfigError) as e:
        RunDir("~nosuchuser_ts/runs", RunHparams())
    assert "'~nosuchuser_ts/runs'" in _one_line(e.value) and "no user 'nosuchuser_ts'" in str(e.value)
    with pytest.raises(ConfigError, match="nosuchuser_ts"):
        check_writable("~nosuchuser_ts/runs")  # type: ignore[arg-type]
    home = RunDir("~/runs", RunHparams())
    assert home.root == Path.home() / "runs"


@pytest.mark.parametrize(
    ("text", "why"),
    [('{"acc": 0.9', "truncated or not valid JSON"), ("", "truncated"), ("[0.9]", "JSON array")],
)
def test_damaged_result_json(tmp_path: Path, text: str, why: str) -> None:
    level = LevelDir(tmp_path / "level_1")
    level.write_result({"acc": 0.9})
    level.result_path.write_text(text)
    with pytest.raises(DataError) as e:
        level.result()
    msg = _one_line(e.value)
    assert f"'{level.result_path}'" in msg and why in msg and "delete it to recompute this level" in msg


def test_damaged_checkpoint_restarts_the_level(tmp_path: Path) -> None:
    level = LevelDir(tmp_path / "level_1")
    level.save_checkpoint({"it": 3, "w": torch.ones(100)})
    assert level.load_checkpoint()["it"] == 3  # type: ignore[index]
    blob = level.checkpoint_path.read_bytes()
    level.checkpoint_path.write_bytes(blob[: len(blob) // 2])
    assert level.load_checkpoint() is None


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "array"), ('"x"', "string"), ("{", None)])
def test_mask_sidecar_not_an_object(tmp_path: Path, text: str, kind: str | None) -> None:
    path = _mask().save(tmp_path / "mask.safetensors")
    side = tmp_path / "mask.json"
    side.write_text(text)
    with pytest.raises(DataError) as e:
        Mask.load(path)
    msg = _one_line(e.value)
    assert f"'{side}'" in msg and (kind is None or f"JSON {kind}, expected an object" in msg)


def test_load_state_damaged(tmp_path: Path) -> None:
    p = save_state(tmp_path / "s.safetensors", {"w": torch.ones(10)})
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(DataError, match="cannot read model state"):
        load_state(p)
