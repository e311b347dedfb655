"""Tickets for small devices: file size per format, CPU inference latency, fine-tuning memory and time.

LeNet-300-100 (1×28×28) and Conv-6 (3×32×32) tickets at densities 50/20/5/2/1%: random layerwise masks
(``ticketsearch.core.select`` of uniform random scores) on the model's Kaiming-normal init, which is all
size and speed depend on. Three measurements:

* **size**: every format (``dense``, ``bitmask``, ``csr``, ``auto``, ``onnx``) × value dtype (fp32, fp16;
  ONNX is fp32 only), as a fraction of the dense fp32 model (4 bytes per parameter and buffer); also the
  index cost of ``auto`` in bits per weight beside the mask's entropy H(density). Targets: at 5%,
  ``auto`` ≤ 8% of dense fp32, ≤ 4% in fp16.
* **latency**: one forward on CPU, batch 1 and 64, ``torch.inference_mode``: ``dense`` — the model as
  trained (``create_model`` with the dense weights, eager); ``ticket-dense`` — ``load_ticket(policy=
  "dense")``, the same traced executor with every layer dense (isolates what sparsity itself buys);
  ``ticket`` — ``load_ticket()`` (per layer dense, torch CSR or the compiled kernel, measured at load
  time). The three variants run interleaved: per round each runs a block of calls (median per call), in
  an order rotated every round; the speed-up is the median over rounds of the paired per-round ratio
  dense / ticket, reported with its quartiles (where they straddle 1.0, the two are equal within noise).
  Targets: ticket ≥ 2× faster than dense at batch 1 for density ≤ 5% on LeNet-300-100; never slower.
* **fine-tuning**: dense masked training (ticketsearch's masked layers and fused optimizer: dense weights,
  gradients and Adam state) vs ``ticketsearch.export.finetune``'s kept-weight model (1-D kept values per
  layer, Adam state of the kept size), Adam, batch 60. Memory and time are measured in separate fresh
  processes. Memory: the growth from just before the first step of (a) the peak anonymous resident
  memory (resident − shared pages of ``/proc/self/statm``, sampled every 0.5 ms by a thread) and (b)
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, its peak mark reset first (Linux ``clear_refs``) so
  set-up does not hide it; that process runs with glibc mapping every block of 64 KiB or more on its own
  (``MALLOC_MMAP_THRESHOLD_``), so a tensor cannot reuse memory the set-up freed. tracemalloc does not
  see PyTorch's allocations. The optimizer state and parameters are also counted exactly. Time per
  epoch = seconds per step (a second run, after a warm-up run) × steps per epoch (MNIST 55,000 / 60;
  CIFAR-10 45,000 / 60), on random data of the dataset's shape (content does not change the cost, and
  no CIFAR-10 files are here).

Results: ``benchmarks/results/export_size/<variant>.{json,md}``, the variant named after the threads
(``1thread``); ``--variant`` to name another. From the repository root (about 4 minutes on 2 cores):

    OMP_NUM_THREADS=1 python -m benchmarks.export_size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ._common import REPO, paired_ratio
from ._writer import ResultWriter, add_output_args, md_table

MODELS = {"lenet_300_100": (1, 28, 28), "conv6": (3, 32, 32)}
DENSITIES = (0.5, 0.2, 0.05, 0.02, 0.01)
FORMATS = ("dense", "bitmask", "csr", "auto", "onnx")
FINETUNE = {"lenet_300_100": (0.2, 0.05, 0.01), "conv6": (0.05,)}
STEPS_PER_EPOCH = {"lenet_300_100": 55000 // 60, "conv6": 45000 // 60}


def make_ticket(model: str, density: float) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    from ticketsearch.core import select
    from ticketsearch.models import create_model
    from ticketsearch.sparse import apply_mask, prunable_parameters

    torch.manual_seed(0)
    m = create_model(model, MODELS[model], 10)
    g = torch.Generator().manual_seed(0)
    mask = select(
        {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(m).items()},
        density,
        scope="layerwise",
    )
    apply_mask(m, mask)
    meta = {
        "model": model,
        "input_shape": list(MODELS[model]),
        "num_classes": 10,
        "source": {"benchmark": "export_size"},
    }
    return m.eval(), mask, meta


def entropy_bits(d: float) -> float:
    return 0.0 if d in (0.0, 1.0) else -(d * math.log2(d) + (1 - d) * math.log2(1 - d))


# -- size ------------------------------------------------------------------------------------------------
def measure_sizes(model: str, density: float, tmp: Path) -> list[dict[str, Any]]:
    from ticketsearch.export import export_ticket

    m, mask, meta = make_ticket(model, density)
    state = m.state_dict()
    rows = []
    for fmt in FORMATS:
        for dtype in ("fp32", "fp16"):
            if fmt == "onnx" and dtype == "fp16":
                continue
            t0 = time.perf_counter()
            try:
                r = export_ticket(
                    state,
                    mask,
                    format=fmt,
                    dtype=dtype,
                    out=tmp / f"{model}_{density}.{fmt}.{dtype}",
                    metadata=meta,
                )
            except Exception as exc:  # onnx not installed: recorded, not fatal
                rows.append(
                    {"model": model, "density": density, "format": fmt, "dtype": dtype, "error": str(exc)}
                )
                continue
            row = {
                "model": model,
                "density": density,
                "actual_density": r.density,
                "format": fmt,
                "dtype": dtype,
                "bytes": r.bytes,
                "dense_fp32_bytes": r.dense_fp32_bytes,
                "fraction_of_dense_fp32": r.ratio,
                "export_s": time.perf_counter() - t0,
                "layers": {n: v["encoding"] for n, v in r.layers.items()},
            }
            if fmt == "auto":
                from ticketsearch.export import read_ticket

                t = read_ticket(r.path)
                vbytes = sum(v.numel() * v.element_size() for v in t.values.values())
                dbytes = sum(v.numel() * v.element_size() for v in t.dense.values())
                total = t.header["num_total"]
                row["index_bits_per_weight"] = 8 * (r.bytes - vbytes - dbytes) / total
                row["entropy_bits_per_weight"] = entropy_bits(r.density)
            rows.append(row)
    return rows


# -- latency ---------------------------------------------------------------------------------------------
def interleaved(fns: dict[str, Any], *, rounds: int, block: int, warm: int) -> dict[str, list[float]]:
    """Per variant, one time per round (seconds per call: the median of a block of calls).

    Each round runs every variant's block back to back, in an order rotated every round, so the machine's
    load drift (2 shared cores, other jobs) lands on all variants of a round alike; ratios are then taken
    per round (paired) and summarised by their median, which one disturbed round cannot move."""
    keys = list(fns)
    for f in fns.values():
        for _ in range(warm):
            f()
    per: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            f = fns[k]
            ts = []
            for _ in range(block):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            per[k].append(statistics.median(ts))
    return per


def _paths_text(paths: dict[str, Any], key: int) -> str:
    by: dict[str, list[str]] = {}
    for name, v in paths.items():
        by.setdefault(v["paths"][key], []).append(name)
    return "; ".join(f"{p}: {', '.join(by[p])}" for p in ("compiled", "csr") if p in by) or "all dense"


def measure_latency(model: str, density: float, tmp: Path, rounds: int) -> list[dict[str, Any]]:
    from ticketsearch.export import export_ticket, load_ticket, path_summary
    from ticketsearch.models import create_model

    m, mask, meta = make_ticket(model, density)
    path = export_ticket(
        m.state_dict(), mask, format="auto", out=tmp / f"lat_{model}_{density}", metadata=meta
    ).path
    dense = create_model(model, MODELS[model], 10).eval()
    dense.load_state_dict(m.state_dict())
    t0 = time.perf_counter()
    ticket = load_ticket(path)
    load_s = time.perf_counter() - t0
    ticket_dense = load_ticket(path, policy="dense")
    paths = path_summary(ticket)
    rows = []
    for batch in (1, 64):
        x = torch.randn(batch, *MODELS[model], generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            err = float((ticket(x) - dense(x)).abs().max())
            scale = float(dense(x).abs().max())
            if model == "conv6":  # ~3 ms per call at batch 1, ~0.15 s at 64: short blocks, many rounds
                block, n_rounds, warm = (5, 6 * rounds, 3) if batch == 1 else (1, 3 * rounds, 1)
            else:
                block, n_rounds, warm = (200, 6 * rounds, 50) if batch == 1 else (20, 6 * rounds, 5)
            per = interleaved(
                {
                    "dense": lambda x=x: dense(x),
                    "ticket-dense": lambda x=x: ticket_dense(x),
                    "ticket": lambda x=x: ticket(x),
                },
                rounds=n_rounds,
                block=block,
                warm=warm,
            )
        ratio, q1, q3 = paired_ratio(per["dense"], per["ticket"])
        ratio_td, _, _ = paired_ratio(per["ticket-dense"], per["ticket"])
        key = 1 if batch == 1 else 64
        rows.append(
            {
                "model": model,
                "density": density,
                "batch": batch,
                "rounds": n_rounds,
                "block": block,
                "dense_ms": statistics.median(per["dense"]) * 1e3,
                "ticket_dense_ms": statistics.median(per["ticket-dense"]) * 1e3,
                "ticket_ms": statistics.median(per["ticket"]) * 1e3,
                "speedup_vs_dense": ratio,
                "speedup_vs_dense_q1": q1,
                "speedup_vs_dense_q3": q3,
                "speedup_vs_ticket_dense": ratio_td,
                "max_abs_diff_vs_dense": err,
                "max_abs_output": scale,
                "load_s": load_s,
                "paths": _paths_text(paths, key),
                "layer_paths": {n: v["paths"][key] for n, v in paths.items()},
            }
        )
    return rows


# -- fine-tuning (child processes) -----------------------------------------------------------------------
def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset_peak() -> tuple[int, bool]:
    """Reset the peak-RSS mark to the current RSS (Linux ``/proc/self/clear_refs`` 5, which ru_maxrss
    follows), so the peak read after training is training's own, not data loading's; (current RSS, reset?)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss * 1024, True
    except (OSError, StopIteration, ValueError):
        return _maxrss_bytes(), False


class _AnonPeak:
    """Peak anonymous resident memory while running, sampled from ``/proc/self/statm`` (resident − shared
    pages) every half millisecond by a thread. Unlike ru_maxrss it leaves out file-backed pages (library
    code faulting back in after the machine reclaimed it), which swamped the MiB-sized differences measured
    here when another job pressed on memory."""

    def __init__(self) -> None:
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(0.0005)

    def __enter__(self) -> _AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def _warm_runtime(shape: tuple[int, ...]) -> None:
    """One training step of a tiny conv+linear net: the runtime's one-time set-up (autograd engine, BLAS and
    oneDNN buffers) happens here, not inside the measured run, without pre-allocating the measured run's
    own buffers (freed heap memory it could reuse would hide its growth)."""
    import torch.nn as nn
    import torch.nn.functional as F

    net = nn.Sequential(
        nn.Conv2d(shape[0], 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * shape[1] * shape[2], 10)
    )
    opt = torch.optim.Adam(net.parameters())
    loss = F.cross_entropy(net(torch.randn(60, *shape)), torch.randint(0, 10, (60,)))
    loss.backward()
    opt.step()


def finetune_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning run in this (fresh) process: ``kind`` is ``dense`` or ``kept``."""
    from ticketsearch.core.hparams import TrainingHparams
    from ticketsearch.export import export_ticket, read_ticket
    from ticketsearch.export.finetune import kept_model, train_steps
    from ticketsearch.sparse import mask_pairs

    torch.set_num_threads(int(spec["threads"]))
    model_name, density, kind, steps = spec["model"], spec["density"], spec["kind"], int(spec["steps"])
    g = torch.Generator().manual_seed(0)  # random data of the right shape: content does not change the cost,
    n = 60 * (steps + 2)  # and a small set leaves no freed loading buffers for training to hide in
    x = torch.randn(n, *MODELS[model_name], generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    m, mask, meta = make_ticket(model_name, density)
    hp = TrainingHparams(optimizer="adam", lr=1e-4, batch_size=60, budget=f"{steps}it")
    if kind == "kept":
        with tempfile.TemporaryDirectory() as tmp:
            path = export_ticket(m.state_dict(), mask, format="auto", out=Path(tmp) / "t", metadata=meta).path
            model = kept_model(read_ticket(path))
        del m
        grad_masks = None
    else:
        model = m
        grad_masks = {id(p): mk for p, mk in mask_pairs(model)}
    _warm_runtime(MODELS[model_name])
    before, reset = _reset_peak()  # data and model are in memory: what grows now is training's own
    with _AnonPeak() as anon:
        opt, _, iters, _ = train_steps(model, x, y, hp, iterations=steps, grad_masks=grad_masks)
    after = _maxrss_bytes()
    t0 = time.perf_counter()  # timed on a second run: the first paid one-time set-up (kernels, allocator)
    train_steps(model, x, y, hp, iterations=steps, grad_masks=grad_masks)
    seconds = time.perf_counter() - t0
    state_bytes = sum(t.numel() * t.element_size() for bufs in opt.buffers.values() for t in bufs)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "model": model_name,
        "density": density,
        "kind": kind,
        "steps": iters,
        "seconds_per_step": seconds / iters,
        "seconds_per_epoch": seconds / iters * STEPS_PER_EPOCH[model_name],
        "peak_rss_growth_bytes": after - before,
        "peak_anon_growth_bytes": anon.peak - anon.start,
        "peak_reset": reset,
        "peak_rss_bytes": after,
        "optimizer_state_bytes": state_bytes,
        "parameter_bytes": param_bytes,
    }


def _child(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.export_size", "--child", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **env},
    )
    if p.returncode != 0:
        raise RuntimeError(f"fine-tuning child failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# glibc: every allocation of 64 KiB or more is its own mapping, returned to the system when freed, so a
# tensor the run allocates shows up as new resident memory (not as a reused hole left by the set-up) and
# the peak measures what training holds at once. It slows allocation, so time is measured in another run.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def measure_finetune(model: str, density: float, threads: int, steps: int) -> list[dict[str, Any]]:
    rows = []
    for kind in ("dense", "kept"):
        spec = {"model": model, "density": density, "kind": kind, "steps": steps, "threads": threads}
        mem = _child(spec, MEMORY_ENV)
        timed = _child(spec, {})
        mem_keys = ("peak_rss_growth_bytes", "peak_anon_growth_bytes", "peak_reset", "peak_rss_bytes")
        rows.append({**timed, **{k: mem[k] for k in mem_keys}})
    return rows


# -- report ----------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def report(sizes, latency, finetune, threads: int, loadavg: list[float] | None = None) -> str:
    load = (
        f" Machine load (1-minute load average, {os.cpu_count()} logical cores) at start / end: "
        f"{loadavg[0]:.1f} / {loadavg[1]:.1f}."
        if loadavg
        else ""
    )
    md = [
        "# Ticket export: file size, CPU inference latency, fine-tuning cost",
        "",
        f"Random layerwise masks on Kaiming-normal weights; {threads} torch thread(s). "
        f"Size as % of the dense fp32 model (4 bytes per parameter and buffer).{load}",
        "",
    ]
    for model in MODELS:
        rows = []
        for d in DENSITIES:
            cells = [f"{100 * d:g}%"]
            for fmt in FORMATS:
                for dtype in ("fp32", "fp16"):
                    if fmt == "onnx" and dtype == "fp16":
                        continue
                    r = next(
                        (
                            r
                            for r in sizes
                            if r["model"] == model
                            and r["density"] == d
                            and r["format"] == fmt
                            and r["dtype"] == dtype
                        ),
                        None,
                    )
                    cells.append("-" if r is None or "error" in r else _pct(r["fraction_of_dense_fp32"]))
            a = next(
                (
                    r
                    for r in sizes
                    if r["model"] == model
                    and r["density"] == d
                    and r["format"] == "auto"
                    and r["dtype"] == "fp32"
                ),
                None,
            )
            cells.append(
                "-" if a is None else f"{a['index_bits_per_weight']:.3f} / {a['entropy_bits_per_weight']:.3f}"
            )
            rows.append(cells)
        if not any(r["model"] == model for r in sizes):
            continue
        dense_bytes = next(r["dense_fp32_bytes"] for r in sizes if r["model"] == model and "error" not in r)
        head = ["density"] + [
            f"{f} {t}" for f in FORMATS for t in ("fp32", "fp16") if not (f == "onnx" and t == "fp16")
        ]
        head.append("auto index bits/weight / H(d)")
        md += [f"## Size: {model} (dense fp32 = {dense_bytes:,} bytes)", "", md_table(head, rows), ""]
    md += [
        "`auto` takes per layer the smaller of bitmask and CSR (delta-coded or absolute column indices, "
        "narrowest unsigned ints, then the smallest of raw/zlib/LZMA). `dense` also stores a compressed "
        "bitmask (a kept weight may be 0). ONNX stores layers below 1/3 density as sparse initializers "
        "(int64 indices).",
        "",
        "## CPU inference latency (ms per forward, inference mode)",
        "",
    ]
    rows = [
        [
            r["model"],
            f"{100 * r['density']:g}%",
            r["batch"],
            f"{r['dense_ms']:.4f}",
            f"{r['ticket_dense_ms']:.4f}",
            f"{r['ticket_ms']:.4f}",
            f"{r['speedup_vs_dense']:.2f}× [{r['speedup_vs_dense_q1']:.2f}, {r['speedup_vs_dense_q3']:.2f}]",
            f"{r['speedup_vs_ticket_dense']:.2f}×",
            f"{r['load_s']:.2f}",
            r["paths"],
        ]
        for r in latency
    ]
    md += [
        md_table(
            [
                "model",
                "density",
                "batch",
                "dense",
                "ticket-dense",
                "ticket",
                "× vs dense [quartiles]",
                "× vs ticket-dense",
                "load s",
                "sparse layers (others dense)",
            ],
            rows,
        ),
        "",
        '`dense`: the model as trained (eager, dense weights). `ticket-dense`: `load_ticket(policy="dense")`, '
        "the same traced executor with dense layers. `ticket`: `load_ticket()`, dense, torch CSR or the "
        "compiled kernel per layer and batch size as measured at load time (`load s` includes that "
        "measurement). Times: median over rounds of the median of a block of calls; the three variants run "
        "interleaved (order rotated each round). `× vs dense`: the median over rounds of the paired ratio "
        "dense / ticket, with its quartiles over rounds: where the quartiles straddle 1.00 the two are equal "
        "within the machine's noise.",
        "",
    ]
    if finetune:
        md += ["## Fine-tuning (Adam, batch 60, CPU)", ""]
        rows = []
        for r in finetune:
            rows.append(
                [
                    r["model"],
                    f"{100 * r['density']:g}%",
                    r["kind"],
                    f"{r['seconds_per_step'] * 1e3:.2f}",
                    f"{r['seconds_per_epoch']:.1f}",
                    f"{r['peak_anon_growth_bytes'] / 2**20:.1f}",
                    f"{r['peak_rss_growth_bytes'] / 2**20:.1f}",
                    f"{r['optimizer_state_bytes'] / 2**20:.3f}",
                    f"{r['parameter_bytes'] / 2**20:.3f}",
                ]
            )
        md += [
            md_table(
                [
                    "model",
                    "density",
                    "training",
                    "ms/step",
                    "s/epoch",
                    "peak anon. memory growth MiB",
                    "ru_maxrss growth MiB",
                    "Adam state MiB",
                    "parameters MiB",
                ],
                rows,
            ),
            "",
            "`dense`: the masked model as ticketsearch trains it (dense weights, gradients and Adam state, the mask "
            "folded into the update). `kept`: `ticketsearch.export.finetune`'s model (kept values as 1-D parameters). "
            "Peak memory, measured in its own process with glibc mapping every block ≥ 64 KiB separately (so a tensor "
            "cannot reuse memory the set-up freed), from just before the first step: anonymous resident memory "
            "(resident − shared pages of /proc/self/statm, sampled every 0.5 ms by a thread) and `ru_maxrss` "
            "(resource.getrusage; its peak mark reset first through Linux clear_refs), which also counts library "
            "code paged back in. s/epoch = ms/step × steps per epoch (MNIST 916, CIFAR-10 750).",
        ]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: both)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds (default 5)")
    ap.add_argument(
        "--finetune-steps", type=int, default=0, help="steps per fine-tuning run (0: 200 LeNet, 6 Conv-6)"
    )
    ap.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning measurement")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_output_args(ap, "result name (default: <threads>thread(s))")
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(finetune_child(json.loads(args.child))))
        return
    torch.set_num_threads(args.threads)
    variant = args.variant or (f"{args.threads}thread" + ("s" if args.threads != 1 else ""))
    out = ResultWriter("export_size", variant, results_dir=args.results_dir, force_dirty=args.force_dirty)
    load_start = os.getloadavg()[0]
    models = [m for m in args.models.split(",") if m]
    sizes: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    finetune: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for d in DENSITIES:
                sizes += measure_sizes(model, d, Path(tmp))
                latency += measure_latency(model, d, Path(tmp), args.rounds)
                print(f"{model} {d}: sizes and latency done", flush=True)
    if not args.no_finetune:
        for model in models:
            steps = args.finetune_steps or (200 if model == "lenet_300_100" else 6)
            for d in FINETUNE[model]:
                finetune += measure_finetune(model, d, args.threads, steps)
                print(f"{model} {d}: fine-tuning done", flush=True)
    loadavg = [load_start, os.getloadavg()[0]]
    md = report(sizes, latency, finetune, args.threads, loadavg)
    payload = {
        "setup": {
            "models": models,
            "densities": list(DENSITIES),
            "threads": args.threads,
            "rounds": args.rounds,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_1min_start_end": loadavg,
        },
        "sizes": sizes,
        "latency": latency,
        "finetune": finetune,
    }
    out.write(payload, md)
    print(md)


if __name__ == "__main__":
    main()
