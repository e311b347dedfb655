"""End-to-end CPU speed against the reference framework, open_lth: one LTH experiment, two tools, one run.

The experiment is open_lth's ``mnist_lenet_300_100`` default recipe shortened to 2 epochs and one pruning
level (``lottery --default_hparams=mnist_lenet_300_100 --levels=1 --training_steps=2ep``): LeNet-300-100,
Kaiming-normal init, plain SGD lr 0.1 (no momentum, no weight decay, constant lr), batch 128, test set
every epoch, no validation split, sparse-global magnitude pruning of 20% with ``fc.weight`` (the output
layer) left dense, reset to init. ticketsearch runs the same experiment from its CLI (``TICKETSEARCH_CMD``
below: ``--scope global --output-rate 0`` is sparse_global with the output layer ignored).

Each tool runs as a fresh subprocess (wall time includes Python start-up, imports, data loading,
checkpoints), with a fresh results root, ``--repeats`` times, interleaved (open_lth, ticketsearch,
open_lth, ...) so load drift hits both alike; the headline is median(open_lth) / median(ticketsearch),
next to the test accuracy per level of both. A plain in-memory PyTorch loop (same model and SGD, tensors in
memory, randperm batches) gives a floor: seconds per epoch of the bare math.

open_lth is not part of this repository and is never imported here: point ``--openlth`` at a checkout
(``git archive`` of facebookresearch/open_lth, e.g. at /tmp/open_lth); without one, that half is skipped
with a note. It predates current torch/numpy, so it is started through a small launcher (``OPENLTH_LAUNCHER``)
that applies run-time shims and leaves its files untouched:

* ``numpy.product`` (removed in numpy 2.0; ``training/optimizers.py`` uses it) → alias of ``numpy.prod``;
* ``torch.nn.parallel.DistributedDataParallel`` → a bare ``nn.Module`` stub: since torch 1.10 DDP also
  derives from ``abc.ABC``, so ``models/base.py``'s ``class DistributedDataParallel(Model, DDP)`` (with
  ``Model(abc.ABC, nn.Module)``) has no consistent MRO and fails at import. The class is only used for
  multi-GPU distributed runs, never here;
* ``platforms.local.Platform.root`` / ``.dataset_root`` (hard-coded under ``~``) → folders in a temp dir:
  a fresh results root per run (open_lth skips work it finds done), and one dataset root per invocation
  holding the canonical MNIST files in torchvision's layout (``mnist/MNIST/raw``), decompressed before any
  timing, so torchvision neither downloads nor extracts (its steady state after a first download).

Results go to ``benchmarks/results/openlth_speed/default.{json,md}`` (``--variant`` to name another). Run
from the repository root on a quiet machine:

    .venv/bin/python -m benchmarks.openlth_speed --openlth /tmp/open_lth --repeats 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import REPO, data_root
from ._writer import ResultWriter, add_output_args, md_table

OPENLTH_ARGS = ["lottery", "--default_hparams=mnist_lenet_300_100", "--levels=1", "--training_steps=2ep"]

# open_lth's mnist_lenet_300_100 default_hparams (models/mnist_lenet.py), with the defaults it leaves implicit
# (foundations/hparams.py TrainingHparams, training/optimizers.py) spelled out.
TICKETSEARCH_ARGS = [
    "find", "--method", "imp", "--dataset", "mnist", "--model", "lenet_300_100", "--init", "kaiming_normal",
    "--rounds", "1", "--rate", "0.2", "--scope", "global", "--output-rate", "0", "--rewind-iter", "0",
    "--budget", "2ep", "--batch-size", "128", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0",
    "--weight-decay", "0", "--schedule", "constant", "--val-size", "0", "--eval-every", "1ep",
    "--no-progress", "--device", "cpu", "--json",
]  # fmt: skip

HPARAMS = [  # (what, open_lth, ticketsearch flags, note)
    ("model", "mnist_lenet_300_100 (784-300-100-10, ReLU)", "--model lenet_300_100", "same"),
    ("init", "kaiming_normal weights; PyTorch default (uniform) biases", "--init kaiming_normal",
     "weights same; ticketsearch zeroes biases (no flag to keep PyTorch's)"),
    ("data", "MNIST 60k train / 10k test, ToTensor + Normalize(0.1307, 0.3081), no augmentation",
     "--dataset mnist --val-size 0", "same normalisation, no validation split"),
    ("batch", "128, last short batch kept (469 it/epoch)", "--batch-size 128", "same (469 it/epoch)"),
    ("optimizer", "SGD lr 0.1, momentum 0, weight_decay 0, nesterov off", "--optimizer sgd --lr 0.1 "
     "--momentum 0 --weight-decay 0", "same"),
    ("schedule", "LambdaLR ≡ 1 (no milestones, no warm-up)", "--schedule constant", "same"),
    ("budget", "2ep per level, levels 0..1", "--budget 2ep --rounds 1", "same: 938 iterations × 2 levels"),
    ("evaluation", "test set at ep 0, 1, 2 (batch 128), checkpoint every epoch", "--eval-every 1ep",
     "ticketsearch evaluates at 1ep, 2ep (not before training)"),
    ("pruning", "sparse_global 20%, fc.weight ignored, biases never pruned", "--scope global --rate 0.2 "
     "--output-rate 0", "open_lth takes 20% of ALL remaining weights incl. the ignored fc.weight "
     "(ceil(0.2·266,200) = 53,240, +1 at the threshold) from the hidden layers: 53,241 pruned, overall "
     "density 0.8000; ticketsearch takes 20% of the prunable pool: 53,040, density 0.8008"),
    ("rewind", "reset to init (train_start_step 0)", "--rewind-iter 0", "same"),
    ("data order", "unseeded randperm per epoch", "--seed 0 (default)", "both reshuffle every epoch"),
]  # fmt: skip

OPENLTH_LAUNCHER = r"""
import os, runpy, sys
import numpy as np
import torch, torch.nn.parallel
if not hasattr(np, "product"):
    np.product = np.prod
class _NoDDP(torch.nn.Module):
    pass
torch.nn.parallel.DistributedDataParallel = _NoDDP
root = os.path.abspath(sys.argv[1])
sys.argv = [os.path.join(root, "open_lth.py"), *sys.argv[2:]]
sys.path.insert(0, root)
os.chdir(root)
import platforms.local as _local
_local.Platform.root = property(lambda self: os.environ["OPEN_LTH_ROOT"])
_local.Platform.dataset_root = property(lambda self: os.environ["OPEN_LTH_DATASETS"])
runpy.run_path(sys.argv[0], run_name="__main__")
"""

PLAIN_LOOP = r"""
import gzip, json, sys, time
from pathlib import Path
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
root, epochs, bs, lr = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t_start = time.perf_counter()
def idx(name):
    for p in (root / "mnist" / f"{name}.gz", root / f"{name}.gz", root / "mnist" / "MNIST" / "raw" / f"{name}.gz"):
        if p.exists():
            raw = gzip.decompress(p.read_bytes())
            return np.frombuffer(raw, np.uint8, offset=16 if "images" in name else 8)
    raise SystemExit(f"MNIST file {name}.gz not found under {root}")
def images(a):
    return ((torch.from_numpy(a.copy()).float().view(-1, 784) / 255) - 0.1307) / 0.3081
xtr, ytr = images(idx("train-images-idx3-ubyte")), torch.from_numpy(idx("train-labels-idx1-ubyte").astype(np.int64))
xte, yte = images(idx("t10k-images-idx3-ubyte")), torch.from_numpy(idx("t10k-labels-idx1-ubyte").astype(np.int64))
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
for m in model:
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight)
opt = torch.optim.SGD(model.parameters(), lr=lr)
load_s = time.perf_counter() - t_start
epoch_s, eval_s, acc = [], [], []
for ep in range(epochs):
    t0 = time.perf_counter()
    model.train()
    perm = torch.randperm(len(ytr))
    for i in range(0, len(ytr), bs):
        b = perm[i:i + bs]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xtr[b]), ytr[b]).backward()
        opt.step()
    t1 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        acc.append((model(xte).argmax(1) == yte).float().mean().item())
    epoch_s.append(t1 - t0)
    eval_s.append(time.perf_counter() - t1)
print(json.dumps({"load_s": load_s, "epoch_s": epoch_s, "eval_s": eval_s, "test_acc": acc,
                  "threads": torch.get_num_threads()}))
"""

_EVAL_LINE = re.compile(
    r"^test\s+ep (\d+)\s+it (\d+)\s+loss ([\d.]+)\s+acc ([\d.]+)%\s+ex \d+\s+time ([\d.]+)s"
)
_LEVEL_LINE = re.compile(r"Pruning Level (\d+)")


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None, timeout: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}:\n{tail}")
    return wall, proc.stdout


def _mnist_gz(root: Path) -> dict[str, Path]:
    names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    found = {}
    for n in names:
        for p in (root / "mnist" / f"{n}.gz", root / f"{n}.gz", root / "mnist" / "MNIST" / "raw" / f"{n}.gz"):
            if p.exists():
                found[n] = p
                break
        else:
            raise SystemExit(f"MNIST file {n}.gz not found under {root}")
    return found


def prepare_openlth_datasets(data: Path, dest: Path) -> Path:
    """torchvision's MNIST layout under ``dest``: the canonical .gz files (linked) and their decompressed
    copies, so ``MNIST(download=True)`` finds everything and does no I/O beyond reading (not timed)."""
    raw = dest / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, gz in _mnist_gz(data).items():
        link = raw / gz.name
        if not link.exists():
            link.symlink_to(gz.resolve())
        (raw / name).write_bytes(gzip.decompress(gz.read_bytes()))
    return dest


def parse_openlth(stdout: str, results_root: Path) -> dict[str, Any]:
    """Per-level test accuracy from the logger files, per-epoch wall time from the eval lines on stdout."""
    levels: dict[int, dict[str, Any]] = {}
    for logger in sorted(results_root.glob("lottery_*/replicate_*/level_*/main/logger")):
        level = int(logger.parent.parent.name.split("_")[1])
        accs = {}
        for line in logger.read_text().splitlines():
            name, it, value = line.split(",")
            if name == "test_accuracy":
                accs[int(it)] = float(value)
        final_it = max(accs)
        levels[level] = {"test_acc": accs[final_it], "test_acc_by_iteration": accs}
        report = logger.parent / "sparsity_report.json"
        if report.exists():
            rep = json.loads(report.read_text())
            levels[level]["density"] = rep["unpruned"] / rep["total"]
    level, epoch_s = -1, []
    for line in stdout.splitlines():
        if m := _LEVEL_LINE.search(line):
            level = int(m.group(1))
        elif (m := _EVAL_LINE.match(line)) and int(m.group(1)) > 0:
            epoch_s.append(float(m.group(5)))
            levels.setdefault(level, {}).setdefault("epoch_s", []).append(float(m.group(5)))
    return {"levels": [levels[k] for k in sorted(levels)], "epoch_s": epoch_s}


def run_openlth(python: str, openlth: Path, datasets: Path, tmp: Path, timeout: float) -> dict[str, Any]:
    results = Path(tempfile.mkdtemp(prefix="openlth_results_", dir=tmp))
    env = {**os.environ, "OPEN_LTH_ROOT": str(results), "OPEN_LTH_DATASETS": str(datasets)}
    cmd = [python, "-c", OPENLTH_LAUNCHER, str(openlth), *OPENLTH_ARGS]
    wall, out = _run(cmd, cwd=openlth, env=env, timeout=timeout)
    parsed = parse_openlth(out, results)
    shutil.rmtree(results, ignore_errors=True)
    return {"wall_s": wall, **parsed}


def run_ticketsearch(python: str, data: str, tmp: Path, timeout: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ticketsearch_runs_", dir=tmp))
    cmd = [python, "-m", "ticketsearch", *TICKETSEARCH_ARGS, "--data-root", data, "--root", str(root)]
    wall, out = _run(cmd, cwd=REPO, env=None, timeout=timeout)
    rows = json.loads(out)["rows"]
    shutil.rmtree(root, ignore_errors=True)
    levels = [
        {"test_acc": r["test_acc"], "density": r["density"], "level_wall_s": r.get("wall_time")} for r in rows
    ]
    return {"wall_s": wall, "levels": levels}


def run_plain(python: str, data: str, tmp: Path, timeout: float, epochs: int = 2) -> dict[str, Any]:
    wall, out = _run(
        [python, "-c", PLAIN_LOOP, data, str(epochs), "128", "0.1"], cwd=tmp, env=None, timeout=timeout
    )
    return {"wall_s": wall, **json.loads(out.strip().splitlines()[-1])}


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _accs(runs: list[dict[str, Any]]) -> str:
    """Per level: the accuracies of every repeat, e.g. 'L0 97.06 / 96.98; L1 96.94 / 97.01'."""
    if not runs:
        return "—"
    n = max(len(r["levels"]) for r in runs)
    parts = []
    for k in range(n):
        vals = [f"{100 * r['levels'][k]['test_acc']:.2f}" for r in runs if k < len(r["levels"])]
        parts.append(f"L{k} " + " / ".join(vals))
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--openlth", type=Path, default=Path("/tmp/open_lth"), help="an open_lth checkout (skipped if absent)"
    )
    ap.add_argument("--repeats", type=int, default=2, help="runs of each tool, interleaved")
    ap.add_argument("--python", default=sys.executable, help="interpreter for every subprocess")
    ap.add_argument("--data-root", default=data_root(), help="folder holding mnist/*.gz")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    ap.add_argument("--target", type=float, default=5.0, help="speed-up asked for (open_lth / ticketsearch)")
    add_output_args(ap, "result name (default: default)")
    args = ap.parse_args()
    out = ResultWriter(
        "openlth_speed", args.variant or "default", results_dir=args.results_dir, force_dirty=args.force_dirty
    )

    openlth = args.openlth.resolve()
    have_openlth = (openlth / "open_lth.py").is_file() and (openlth / "platforms" / "local.py").is_file()
    notes = []
    if not have_openlth:
        notes.append(
            f"open_lth skipped: no checkout at {openlth} (git archive facebookresearch/open_lth there, "
            "then pass --openlth PATH)"
        )
        print(notes[-1], flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="openlth_speed_"))
    runs: dict[str, list[dict[str, Any]]] = {"open_lth": [], "ticketsearch": [], "plain": []}
    try:
        datasets = prepare_openlth_datasets(Path(args.data_root), tmp / "datasets") if have_openlth else None
        for r in range(args.repeats):
            if have_openlth:
                assert datasets is not None
                res = run_openlth(args.python, openlth, datasets, tmp, args.timeout)
                runs["open_lth"].append(res)
                print(f"[{r}] open_lth      {res['wall_s']:7.2f} s  {_accs([res])}", flush=True)
            res = run_ticketsearch(args.python, args.data_root, tmp, args.timeout)
            runs["ticketsearch"].append(res)
            print(f"[{r}] ticketsearch  {res['wall_s']:7.2f} s  {_accs([res])}", flush=True)
            res = run_plain(args.python, args.data_root, tmp, args.timeout)
            runs["plain"].append(res)
            print(
                f"[{r}] plain loop    {res['wall_s']:7.2f} s  epochs {[round(e, 2) for e in res['epoch_s']]} s",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: _median([r["wall_s"] for r in v]) for k, v in runs.items()}
    ratio = med["open_lth"] / med["ticketsearch"] if med["open_lth"] and med["ticketsearch"] else None
    pair_ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(runs["open_lth"], runs["ticketsearch"])]
    epoch_med = {
        "open_lth": _median([e for r in runs["open_lth"] for e in r["epoch_s"]]),
        "plain": _median([e for r in runs["plain"] for e in r["epoch_s"]]),
    }
    ts_level_s = [
        lv["level_wall_s"] for r in runs["ticketsearch"] for lv in r["levels"] if lv.get("level_wall_s")
    ]
    summary = {
        "median_wall_s": med,
        "ratio_openlth_over_ticketsearch": ratio,
        "paired_ratios": pair_ratios,
        "target": args.target,
        "meets_target": None if ratio is None else ratio >= args.target,
        "median_epoch_s": {**epoch_med, "ticketsearch_level_s": _median(ts_level_s)},
    }
    payload = {
        "experiment": "open_lth " + " ".join(OPENLTH_ARGS),
        "commands": {
            "open_lth": f"python open_lth.py {' '.join(OPENLTH_ARGS)}  (via the shim launcher, cwd {openlth})",
            "ticketsearch": f"python -m ticketsearch {' '.join(TICKETSEARCH_ARGS)} --data-root {args.data_root} "
            "--root <fresh tmp>",
            "plain": "inline in-memory SGD loop (PLAIN_LOOP in this script), 2 epochs",
        },
        "openlth_path": str(openlth) if have_openlth else None,
        "hparams": [dict(zip(("what", "open_lth", "ticketsearch", "note"), h)) for h in HPARAMS],
        "repeats": args.repeats,
        "runs": runs,
        "summary": summary,
        "notes": notes,
    }

    lines = [
        "# Speed against open_lth (CPU, end to end)",
        "",
        f"Experiment: `open_lth.py {' '.join(OPENLTH_ARGS)}` (LeNet-300-100, SGD 0.1, batch 128, 2 levels × 2 "
        "epochs, test every epoch) and the same with ticketsearch's CLI; each a fresh subprocess (wall time "
        f"includes start-up and data loading), {args.repeats} repeat(s) interleaved. Device: CPU, "
        f"{os.cpu_count()} cores.",
        "",
        md_table(
            ["run", "median wall (s)", "all runs (s)", "test acc per level (%)"],
            [
                [
                    k,
                    _fmt(med[k]),
                    ", ".join(f"{r['wall_s']:.2f}" for r in v) or "—",
                    _accs(v)
                    if k != "plain"
                    else "after each epoch: "
                    + "; ".join(" / ".join(f"{100 * a:.2f}" for a in r["test_acc"]) for r in v),
                ]
                for k, v in runs.items()
            ],
        ),
        "",
        f"**open_lth / ticketsearch: {_fmt(ratio)}×** (target ≥ {args.target:g}×"
        + ("" if ratio is None else (": met" if ratio >= args.target else ": NOT met"))
        + f"; per pair: {', '.join(f'{x:.2f}' for x in pair_ratios) or '—'}).",
        "",
        f"Per epoch: open_lth {_fmt(epoch_med['open_lth'])} s (eval to eval: train + test + checkpoint), "
        f"plain in-memory loop {_fmt(epoch_med['plain'])} s (training only); ticketsearch "
        f"{_fmt(summary['median_epoch_s']['ticketsearch_level_s'])} s per 2-epoch level (in-process).",
        "",
        "## Hyperparameters (open_lth `models/mnist_lenet.py` default_hparams vs the ticketsearch flags)",
        "",
        md_table(["", "open_lth", "ticketsearch", "note"], [list(h) for h in HPARAMS]),
        "",
        f"ticketsearch command: `python -m ticketsearch {' '.join(TICKETSEARCH_ARGS)} --data-root <data> "
        "--root <fresh tmp>`",
        "",
        "open_lth runs unmodified through a launcher with run-time shims: `numpy.product` → `numpy.prod`; "
        "`torch.nn.parallel.DistributedDataParallel` → an `nn.Module` stub (MRO conflict with `abc.ABC` since "
        "torch 1.10; unused on CPU); `platforms.local` roots → a fresh temp results root per run and a "
        "pre-extracted torchvision MNIST layout (no download, no extraction in the timed runs).",
    ]
    lines += [f"\nNote: {n}" for n in notes]
    j, m = out.write(payload, "\n".join(lines))
    print(f"ratio open_lth/ticketsearch = {_fmt(ratio)} -> {j} {m}")


if __name__ == "__main__":
    main()
