"""One run over several processes: real torch.distributed (gloo on CPU), real processes, no mocks.

The oracle of every multi-process run is the same command in one process: masks equal bit for bit,
losses and accuracies within float rounding (DDP averages per-rank gradients: the same mean as one batch,
summed in another order; the gap grows with the steps, hence relative 1e-4 on losses). ``--val-size 143`` leaves 1295 training rows, so an epoch's last batch (15 rows
at batch 64) splits 8/7 between two ranks: the loss scaling for unequal slices is exercised too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from nets import digits_hparams

from ticketsearch.cli import main
from ticketsearch.core import ConfigError, Mask
from ticketsearch.core.hparams import (
    RunHparams,
)
from ticketsearch.experiments.runner import RunOptions, prepare
from ticketsearch.training.distributed import World

REPO = Path(__file__).resolve().parents[1]

BASE = [
    "--dataset", "digits", "--model", "mlp_digits", "--val-size", "143", "--batch-size", "64",
    "--device", "cpu", "--no-progress", "--json", "--seed", "3",
]  # fmt: skip
IMP = ["find", "--method", "imp", "--rounds", "2", "--budget", "30it", "--eval-every", "15it", *BASE]
SNIP = ["find", "--method", "snip", "--density", "0.2", "--score-batches", "2", "--budget", "30it",
        "--eval-every", "15it", *BASE]  # fmt: skip

GMP = ["find", "--method", "gmp", "--density", "0.2", "--budget", "30it", "--eval-every", "10it",
       "--arg", "every=3", *BASE]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_process(args: list[str], root: Path) -> dict:
    """The oracle: the same command in this process (no torchrun variables, so no process group)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--root", str(root)]) == 0
    return json.loads(out.getvalue())


def _torchrun(args: list[str], root: Path, n: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
         "-m", "ticketsearch", *args, "--root", str(root)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _ranks(args_of_rank: list[list[str]], **popen) -> list[subprocess.Popen]:
    """Each rank started by hand with the variables torchrun sets (as srun would): the test can give
    ranks different arguments and kill one of them."""
    port, n = _free_port(), len(args_of_rank)
    procs = []
    for rank, args in enumerate(args_of_rank):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n),
               "RANK": str(rank), "LOCAL_RANK": str(rank)}  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ticketsearch", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                **popen,
            )  # fmt: skip
        )
    return procs


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".lock"))


def _assert_same_run(one: dict, many: dict) -> None:
    assert len(one["rows"]) == len(many["rows"])
    for a, b in zip(one["rows"], many["rows"]):
        assert a["level"] == b["level"]
        assert Mask.load(a["mask"]).equals(Mask.load(b["mask"])), f"level {a['level']}: masks differ"
        assert b["density"] == a["density"]
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=1e-9)  # a count over 359 rows
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
        hist_a = [json.loads(x) for x in (Path(a["mask"]).parent / "metrics.jsonl").read_text().splitlines()]
        hist_b = [json.loads(x) for x in (Path(b["mask"]).parent / "metrics.jsonl").read_text().splitlines()]
        assert [h["iteration"] for h in hist_a] == [h["iteration"] for h in hist_b]
        for ha, hb in zip(hist_a, hist_b):
            for k in ("train_loss", "val_loss", "test_loss"):
                if ha[k] is not None:
                    assert hb[k] == pytest.approx(ha[k], rel=1e-4), (k, ha, hb)
            assert hb["val_acc"] == pytest.approx(ha["val_acc"], abs=1e-9)


def test_imp_two_gloo_processes_match_one(tmp_path):
    """IMP, 2 levels: each level's magnitude pruning sees weights trained on both ranks' slices."""
    one = _one_process(IMP, tmp_path / "one")
    r = _torchrun(IMP, tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    many = json.loads(r.stdout)  # rank 0 alone prints: the output parses as one JSON document
    _assert_same_run(one, many)
    assert [row["density"] for row in many["rows"]][-1] < 0.7  # two levels really pruned
    rel = [p.replace("two", "one", 1) for p in _files(tmp_path / "two")]
    assert rel == _files(tmp_path / "one")


def test_gmp_two_gloo_processes_match_one(tmp_path):
    """A mask that moves during training: every pruning step ranks weights trained on both ranks' slices,
    and every rank applies rank 0's masks; masks, losses and files as in one process."""
    one = _one_process(GMP, tmp_path / "one")
    r = _torchrun(GMP, tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    many = json.loads(r.stdout)
    _assert_same_run(one, many)
    assert [row["density"] for row in many["rows"]] == [pytest.approx(0.2, abs=1e-3)] * 2
    rel = [p.replace("two", "one", 1) for p in _files(tmp_path / "two")]
    assert rel == _files(tmp_path / "one")


def test_snip_two_ranks_match_one_and_only_rank_0_touches_files(tmp_path):
    """SNIP scores the same batches on every rank. Rank 1 is given a results root of its own: it must
    neither write nor need anything there (rank 0 reads and writes for both)."""
    one = _one_process(SNIP, tmp_path / "one")
    procs = _ranks([[*SNIP, "--root", str(tmp_path / "two")], [*SNIP, "--root", str(tmp_path / "rank1")]])
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert outs[1][0] == ""  # rank 1 prints nothing
    assert not (tmp_path / "rank1").exists()  # and writes nothing
    _assert_same_run(one, json.loads(outs[0][0]))


@pytest.mark.slow  # two process launches, ~20-30 s on a shared 2-core machine
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_lost_rank_ends_the_other_in_one_line(tmp_path, how):
    """Rank 1 killed (-9: its sockets close) or stopped (SIGSTOP: a hung rank, silent sockets) mid-training:
    rank 0 stops with exit 2 and one `error:` line, within the process-group timeout, and its checkpoint
    stays for the rerun."""
    timeout = 5 if how == "stop" else 60
    args = [*IMP, "--rounds", "0", "--density", "1", "--budget", "20000it", "--eval-every", "10it",
            "--root", str(tmp_path), "--dist-timeout", str(timeout)]  # fmt: skip
    procs = _ranks([args, args])
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.rglob("checkpoint.pt")):
            assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1]
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 2, err
    assert waited < timeout + 10, waited  # the kill is seen at once, the hang after the timeout
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2: lost the other ranks"), err
    assert f"--dist-timeout {timeout}s" in lines[0] and "Traceback" not in err
    if how == "stop":
        assert "Timed out" in lines[0]
    assert list(tmp_path.rglob("checkpoint.pt"))  # a lost rank is no bad input: nothing is cleaned


@pytest.mark.slow  # two process launches, ~20-30 s on a shared 2-core machine
def test_resume_after_the_whole_job_is_killed(tmp_path):
    """torchrun killed (every process, kill -9) after a checkpoint of level 0; the same command resumes
    and ends with the masks and metrics of an uninterrupted one-process run."""
    args = [*IMP, "--rounds", "1", "--budget", "200it", "--eval-every", "20it"]
    one = _one_process(args, tmp_path / "one")
    root = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ticketsearch", *args, "--root", str(root)]  # fmt: skip
    job = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while not list(root.rglob("level_0/checkpoint.pt")):
        assert time.monotonic() < deadline and job.poll() is None, "no checkpoint before the job ended"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not list(root.rglob("result.json"))  # killed inside level 0
    r = _torchrun(args, root)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(one, json.loads(r.stdout))


@pytest.mark.slow  # two process launches
def test_train_mask_two_processes_match_one(tmp_path):
    """`train --mask`: a ticket from a one-process IMP run, trained by 2 gloo processes and by 1."""
    found = _one_process([*IMP, "--rounds", "1"], tmp_path / "find")
    args = ["train", "--mask", found["rows"][-1]["mask"], "--budget", "30it", "--eval-every", "15it", *BASE]
    one = _one_process(args, tmp_path / "one")
    r = _torchrun(args, tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(one, json.loads(r.stdout))


def test_bad_input_under_torchrun_is_one_line_from_rank_0(tmp_path):
    """A batch that does not split over the ranks: both exit 2, rank 0 says why in one line, rank 1 is
    silent, and nothing is created."""
    args = [*IMP, "--batch-size", "63", "--root", str(tmp_path / "runs")]
    procs = _ranks([args, args])
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    lines = [ln for ln in outs[0][1].splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --batch-size 63 does not divide by the 2"), outs[
        0
    ][1]
    assert outs[1][1].strip() == "" and outs[1][0] == ""
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*"))


# -- the pure parts, without processes ------------------------------------------------------------------
@pytest.mark.parametrize("n,size", [(15, 2), (7, 3), (2, 4), (64, 2)])
def test_shards_are_torch_tensor_split(n, size):
    rows = torch.arange(n)
    want = torch.tensor_split(rows, size)
    got = [rows[World(size, r, r, active=True).shard(n)] for r in range(size)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def _hp(method: str, batch_size: int) -> RunHparams:
    return digits_hparams(method, training=dict(batch_size=batch_size, budget="10it"), density=0.5)


def test_prepare_refuses_what_torchrun_cannot_run(tmp_path):
    """Checked before any process group traffic or file: an uneven batch, a method that keeps per-rank
    files or state (supermask, early-bird)."""
    world = World(2, 0, 0, active=True)  # no group is opened: prepare() must not communicate
    opts = RunOptions(root=tmp_path, device="cpu", progress=False, world=world)
    with pytest.raises(ConfigError, match=r"--batch-size 63 does not divide by the 2 processes"):
        prepare(_hp("imp", 63), opts)
    for method in ("supermask", "early-bird"):
        with pytest.raises(ConfigError, match=rf"method '{method}' does not run under torchrun"):
            prepare(_hp(method, 64), opts)
    prepare(_hp("snip", 64), opts)  # supported: no error
    assert not list(tmp_path.iterdir())
