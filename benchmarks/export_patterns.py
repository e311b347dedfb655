"""Structured tickets on the CPU: N:M and block patterns against dense and unstructured CSR, latency and size.

Issue 22's target: a 2:4 ticket of LeNet-300-100 or a transformer-sized Linear runs ≥ 1.4× faster than
dense at batch 1 on one CPU thread, and no layer ever runs slower than dense (``load_ticket`` keeps dense
unless a sparse path measured ≥ 10% faster at load time).

Three nets, each at 50% and 25% density under four patterns — ``unstructured``, ``2:4``, ``1:4`` (25% only:
it keeps at most a quarter) and ``block:4x4`` — with masks from ``core.select`` of uniform random scores
(speed and size do not depend on accuracy, which is not measured here):

* ``lenet_300_100`` on MNIST shapes (784→300→100→10; its 10-output layer cannot hold 4×4 blocks and is
  kept dense under ``block:4x4``, as ``--allow-dense-layers`` does);
* ``ffn_768``: a transformer feed-forward block, Linear 768→3072, ReLU, Linear 3072→768 (BERT-base sizes;
  an ``MLP`` registered in this process only);
* ``vit_mnist``: the small vision transformer (49-pixel patches → 64 wide, 3 pre-norm blocks of attention
  and a 128-wide MLP; its patch embedding cannot hold N:M and 4×4 blocks over 49 inputs and is kept
  dense), per layer its first block only (the three have the same shapes). At batch B each Linear sees
  17·B rows (16 patches and the class token), so its dense path at batch 1 is already a small matmul;
  its layers are also measured at 17 rows, and the per-net table names the path each layer takes for
  the rows it sees (``load_ticket`` picks by rows, not by the net's batch size).

Measured, one torch thread, batch 1 and 64, ``torch.inference_mode``:

* **per layer**: the layer's dense path as ``load_ticket`` runs it (``addmv`` at batch 1, ``F.linear``
  otherwise), the structured kernel (``nm`` or ``bsr``) and the compiled CSR kernel, each forced;
* **per net**: ``load_ticket(policy="dense")`` (the same traced executor, every layer dense) against
  ``load_ticket()`` (dense, torch CSR, compiled CSR or the structured kernel per layer and batch size,
  chosen by its load-time timing); its choice is listed;
* **size**: the ticket file in ``auto`` (``nm``/``bsr`` under a pattern; per layer the smaller of
  bitmask and CSR otherwise), ``csr`` and ``bitmask``, fp32, and ``auto`` in fp16, as a fraction of the
  dense fp32 model.

Timing: the variants of one measurement run interleaved — per round each runs a block of calls (median
per call), the order rotated every round — and every ratio is the median over rounds of the paired
per-round ratio, with its quartiles (where they straddle 1.0, the two are equal within the machine's
noise). The machine is shared: its load average is recorded at the start and the end.

Results: ``benchmarks/results/export_patterns/<variant>.{json,md}`` (default variant ``1thread``). From
the repository root (about 5 minutes on 2 cores):

    python -m benchmarks.export_patterns

``--device cuda`` (used by ``benchmarks/gpu_check.sh``) measures instead a 4096×4096 fp16 Linear, dense
vs 2:4 semi-structured (``torch.sparse.to_sparse_semi_structured``), batch 64 and 1024 (variant ``cuda``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ._common import paired_ratio
from ._writer import ResultWriter, add_output_args, md_table
from .export_size import interleaved

NETS = {"lenet_300_100": ((1, 28, 28), 10), "ffn_768": ((768,), 768), "vit_mnist": ((1, 28, 28), 10)}
# per-layer rows only for the layers named with these prefixes (all where absent): the ViT's three
# blocks have the same four shapes, so its first block stands for them
LAYER_PREFIXES = {"vit_mnist": ("blocks.0.",)}
# per-layer row counts besides BATCHES: what a layer sees at the net's batch 1 when that is not one row
# (the ViT's 16 patches and class token)
LAYER_ROWS = {"vit_mnist": (17,)}
CONFIGS = (  # (pattern, density)
    ("unstructured", 0.5),
    ("2:4", 0.5),
    ("block:4x4", 0.5),
    ("unstructured", 0.25),
    ("2:4", 0.25),
    ("1:4", 0.25),
    ("block:4x4", 0.25),
)
BATCHES = (1, 64)
TARGET = 1.4  # 2:4 at batch 1 vs dense


def register_ffn() -> None:
    """``ffn_768`` (768→3072→768 with ReLU) in this process's model registry, once."""
    from ticketsearch.models import registry
    from ticketsearch.models.mlp import MLP

    if "ffn_768" in registry.MODELS:
        return

    @registry.register_model(
        "ffn_768",
        description="transformer feed-forward block 768-3072-768 (benchmark only)",
        input_shapes="(768,)",
        example_input_shape=(768,),
    )
    def ffn_768(input_shape: tuple[int, ...], num_classes: int) -> MLP:
        return MLP(input_shape, num_classes, (3072,), name="ffn_768")


def make_ticket(net: str, pattern: str, density: float) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The net with a random ``pattern`` mask at ``density`` applied to its Kaiming-normal init."""
    from ticketsearch.core import select
    from ticketsearch.models import create_model
    from ticketsearch.sparse import apply_mask, prunable_parameters

    shape, classes = NETS[net]
    torch.manual_seed(0)
    m = create_model(net, shape, classes)
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(m).items()}
    mask = select(scores, density, scope="layerwise", pattern=pattern, allow_dense_layers=True)
    apply_mask(m, mask)
    meta = {
        "model": net,
        "input_shape": list(shape),
        "num_classes": classes,
        "source": {"benchmark": "export_patterns"},
    }
    return m.eval(), mask, meta


def _blocks(net: str, batch: int, layer: bool = False) -> tuple[int, int]:
    """(calls per block, warm-up calls): blocks of a few milliseconds (``layer``: one of its layers)."""
    if net == "vit_mnist" and layer:  # 64-192 wide: a few to a few tens of microseconds per call
        return (200, 50) if batch <= 17 else (50, 10)
    if net == "lenet_300_100":
        return (200, 50) if batch == 1 else (20, 5)
    if net == "vit_mnist":  # a call is 17 tokens × batch through 12 Linear layers and attention
        return (50, 10) if batch == 1 else (5, 2)
    return (10, 3) if batch == 1 else (2, 1)


def _ratio_fields(prefix: str, per: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    r, q1, q3 = paired_ratio(per[num], per[den])
    return {prefix: r, f"{prefix}_q1": q1, f"{prefix}_q3": q3}


# -- per layer -------------------------------------------------------------------------------------------
@torch.no_grad()
def measure_layers(net: str, pattern: str, density: float, rounds: int) -> list[dict[str, Any]]:
    from ticketsearch.core.pattern import parse_pattern
    from ticketsearch.export.inference import BATCHES as LOAD_BATCHES
    from ticketsearch.export.inference import SparseLinear, structured_path

    m, mask, _ = make_ticket(net, pattern, density)
    pat = parse_pattern(pattern)
    exempt = set(mask.metadata.get("dense_layers") or [])
    rows = []
    for name, layer in m.named_modules():
        if f"{name}.weight" not in mask or not isinstance(layer, torch.nn.Linear):
            continue
        if net in LAYER_PREFIXES and not name.startswith(LAYER_PREFIXES[net]):
            continue
        w = layer.weight.detach().clone()
        b = layer.bias.detach().clone()
        lp = pat if pat.structured and f"{name}.weight" not in exempt else None
        kind = structured_path(w, lp)
        variants = {"dense": "dense", "csr_kernel": "compiled"}
        if kind is not None:
            variants["structured"] = kind
        layers = {
            v: SparseLinear(w, b, {bb: p for bb in LOAD_BATCHES}, pattern=lp) for v, p in variants.items()
        }
        for batch in sorted({*BATCHES, *LAYER_ROWS.get(net, ())}):
            x = torch.randn(batch, w.shape[1], generator=torch.Generator().manual_seed(1))
            want = torch.nn.functional.linear(x, w, b)
            err = max(float((layers[v](x) - want).abs().max()) for v in layers)
            block, warm = _blocks(net, batch, layer=True)
            with torch.inference_mode():
                per = interleaved(
                    {v: (lambda lay=lay, x=x: lay(x)) for v, lay in layers.items()},
                    rounds=rounds,
                    block=block,
                    warm=warm,
                )
            row: dict[str, Any] = {
                "net": net,
                "layer": name,
                "shape": [int(w.shape[1]), int(w.shape[0])],
                "pattern": pattern,
                "layer_pattern": str(lp) if lp is not None else "unstructured",
                "density": density,
                "actual_density": float((mask[f"{name}.weight"]).float().mean()),
                "batch": batch,
                "rounds": rounds,
                "block": block,
                "dense_us": statistics.median(per["dense"]) * 1e6,
                "csr_kernel_us": statistics.median(per["csr_kernel"]) * 1e6,
                "max_abs_diff": err,
                **_ratio_fields("csr_speedup", per, "dense", "csr_kernel"),
            }
            if "structured" in per:
                row["structured_kernel"] = kind
                row["structured_us"] = statistics.median(per["structured"]) * 1e6
                row.update(_ratio_fields("structured_speedup", per, "dense", "structured"))
            rows.append(row)
    return rows


# -- per net ---------------------------------------------------------------------------------------------
def _paths_text(summary: dict[str, Any], keys: dict[str, int]) -> str:
    by: dict[str, list[str]] = {}
    for name, v in summary.items():
        by.setdefault(v["paths"][keys[name]], []).append(name)
    return "; ".join(f"{p}: {', '.join(n)}" for p, n in sorted(by.items()))


def _path_keys(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """The batch size whose path each Linear layer of ``model`` takes on input ``x``: ``load_ticket``
    picks a layer's path by the rows the layer sees (a ViT layer sees 17 tokens per image), not by the
    net's batch size."""
    from ticketsearch.export.inference import BATCHES, _bucket

    rows: dict[str, int] = {}
    hooks = [
        mod.register_forward_pre_hook(
            lambda _m, args, name=name: rows.__setitem__(name, args[0].numel() // args[0].shape[-1])
        )
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return {name: BATCHES[_bucket(n)] for name, n in rows.items()}


@torch.no_grad()
def measure_net(net: str, pattern: str, density: float, tmp: Path, rounds: int) -> dict[str, Any]:
    from ticketsearch.export import export_ticket, load_ticket, path_summary

    m, mask, meta = make_ticket(net, pattern, density)
    state = m.state_dict()
    sizes: dict[str, Any] = {}
    path = None
    for fmt, dtype in (("auto", "fp32"), ("csr", "fp32"), ("bitmask", "fp32"), ("auto", "fp16")):
        r = export_ticket(
            state, mask, format=fmt, dtype=dtype, out=tmp / f"{net}.{fmt}.{dtype}", metadata=meta
        )
        sizes[f"{fmt}_{dtype}"] = {
            "bytes": r.bytes,
            "fraction_of_dense_fp32": r.ratio,
            "encodings": sorted({v["encoding"] for v in r.layers.values()}),
        }
        if (fmt, dtype) == ("auto", "fp32"):
            path = r.path
            sizes["dense_fp32_bytes"] = r.dense_fp32_bytes
    assert path is not None
    t0 = time.perf_counter()
    ticket = load_ticket(path)
    load_s = time.perf_counter() - t0
    dense = load_ticket(path, policy="dense")
    summary = path_summary(ticket)
    shape = NETS[net][0]
    out: dict[str, Any] = {
        "net": net,
        "pattern": pattern,
        "density": density,
        "actual_density": mask.density,
        "sizes": sizes,
        "load_s": load_s,
        "latency": [],
    }
    for batch in BATCHES:
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
        err = float((ticket(x) - m(x)).abs().max())
        block, warm = _blocks(net, batch)
        with torch.inference_mode():
            per = interleaved(
                {"dense": lambda x=x: dense(x), "ticket": lambda x=x: ticket(x)},
                rounds=rounds,
                block=block,
                warm=warm,
            )
        keys = _path_keys(m, x)
        out["latency"].append(
            {
                "batch": batch,
                "rounds": rounds,
                "block": block,
                "dense_ms": statistics.median(per["dense"]) * 1e3,
                "ticket_ms": statistics.median(per["ticket"]) * 1e3,
                **_ratio_fields("speedup", per, "dense", "ticket"),
                "max_abs_diff_vs_masked_model": err,
                "paths": _paths_text(summary, keys),
                "layer_paths": {n: v["paths"][keys[n]] for n, v in summary.items()},
                "layer_path_batch": keys,  # the measured batch size each layer's path was chosen at
            }
        )
    return out


# -- report ----------------------------------------------------------------------------------------------
def _x(r: dict[str, Any], key: str) -> str:
    if key not in r:
        return "—"
    return f"{r[key]:.2f}× [{r[key + '_q1']:.2f}, {r[key + '_q3']:.2f}]"


def verdict(layers: list[dict[str, Any]], nets: list[dict[str, Any]]) -> list[str]:
    """The 2:4 batch-1 target, met or missed, per layer (structured kernel forced) and per net (auto)."""
    out = []
    for r in layers:
        if r["pattern"] == "2:4" and r["density"] == 0.5 and r["batch"] == 1 and "structured_speedup" in r:
            ok = "met" if r["structured_speedup"] >= TARGET else "**missed**"
            out.append(
                f"{r['net']} `{r['layer']}` {r['shape'][0]}→{r['shape'][1]}: {r['structured_speedup']:.2f}× ({ok})"
            )
    for n in nets:
        if n["pattern"] == "2:4" and n["density"] == 0.5:
            lat = next(x for x in n["latency"] if x["batch"] == 1)
            ok = "met" if lat["speedup"] >= TARGET else "**missed**"
            out.append(f"{n['net']} whole net (load_ticket's choice): {lat['speedup']:.2f}× ({ok})")
    return out


def report(
    layers: list[dict[str, Any]], nets: list[dict[str, Any]], loadavg: list[float], rounds: int
) -> str:
    md = [
        "# Structured tickets on the CPU: N:M and block patterns vs dense and CSR",
        "",
        f"Random masks under each pattern (`core.select` of uniform random scores) on Kaiming-normal weights; "
        f"1 torch thread; {rounds} interleaved rounds per measurement, ratios = median of the paired per-round "
        f"ratios [quartiles]. **Shared, loaded machine**: 1-minute load average {loadavg[0]:.1f} at the start, "
        f"{loadavg[1]:.1f} at the end, on 2 logical cores (other jobs ran beside it; pairing and interleaving "
        "make the ratios fairer than the absolute times).",
        "",
        f"**Target (issue 22): 2:4 at 50%, batch 1, ≥ {TARGET}× dense** — "
        + "; ".join(verdict(layers, nets))
        + ".",
        "",
        "## Per layer: the kernel forced, against the layer's dense path",
        "",
    ]
    rows = []
    for r in layers:
        rows.append(
            [
                r["net"],
                f"`{r['layer']}` {r['shape'][0]}→{r['shape'][1]}",
                r["layer_pattern"],
                f"{100 * r['density']:.0f}%",
                r["batch"],
                f"{r['dense_us']:.1f}",
                f"{r['structured_us']:.1f} ({r['structured_kernel']})" if "structured_us" in r else "—",
                _x(r, "structured_speedup"),
                f"{r['csr_kernel_us']:.1f}",
                _x(r, "csr_speedup"),
            ]
        )
    md.append(
        md_table(
            [
                "net",
                "layer",
                "pattern",
                "density",
                "batch",
                "dense µs",
                "structured µs",
                "× vs dense",
                "CSR kernel µs",
                "CSR × vs dense",
            ],
            rows,
        )  # fmt: skip
    )
    md += [
        "",
        "`dense`: the layer's dense path in `load_ticket` (`addmv` at batch 1, `F.linear` at 64) on the zero-filled "
        "weight. `structured`: the `nm` kernel (N:M: kept values + uint8 in-group indices, inputs picked by register "
        "permutes) or the `bsr` kernel (4×4 blocks), forced. `CSR kernel`: the compiled unstructured CSR kernel "
        "(`spmm/compiled`), forced. Under 25% density a 2:4 layer keeps fewer than 2 of some groups; the N:M kernel "
        "still runs 2 slots per group (the empty ones hold 0).",
        "",
        "## Per net: `load_ticket()` (its per-layer, per-batch choice) vs the same ticket loaded dense",
        "",
    ]
    rows = []
    for n in nets:
        for lat in n["latency"]:
            rows.append(
                [
                    n["net"],
                    n["pattern"],
                    f"{100 * n['density']:.0f}%",
                    lat["batch"],
                    f"{lat['dense_ms']:.4f}",
                    f"{lat['ticket_ms']:.4f}",
                    _x(lat, "speedup"),
                    f"{n['load_s']:.2f}",
                    lat["paths"],
                ]
            )
    md.append(
        md_table(
            [
                "net",
                "pattern",
                "density",
                "batch",
                "dense ms",
                "ticket ms",
                "× vs dense",
                "load s",
                "paths chosen",
            ],
            rows,
        )  # fmt: skip
    )
    md += [
        "",
        '`dense`: `load_ticket(policy="dense")`, the traced executor with every layer dense. `ticket`: '
        "`load_ticket()`; a sparse path is taken only where it measured ≤ 90% of dense at load time (`load s` "
        "includes that timing), so a row at ~1.00× is a net that stayed (mostly) dense.",
        "",
        "## Size (fraction of the dense fp32 net)",
        "",
    ]
    rows = []
    for n in nets:
        s = n["sizes"]
        rows.append(
            [
                n["net"],
                n["pattern"],
                f"{100 * n['density']:.0f}%",
                f"{s['dense_fp32_bytes']:,}",
                f"{100 * s['auto_fp32']['fraction_of_dense_fp32']:.2f}% ({', '.join(s['auto_fp32']['encodings'])})",
                f"{100 * s['csr_fp32']['fraction_of_dense_fp32']:.2f}%",
                f"{100 * s['bitmask_fp32']['fraction_of_dense_fp32']:.2f}%",
                f"{100 * s['auto_fp16']['fraction_of_dense_fp32']:.2f}%",
                f"{s['auto_fp32']['bytes']:,}",
            ]
        )
    md.append(
        md_table(
            [
                "net",
                "pattern",
                "density",
                "dense fp32 bytes",
                "auto fp32 (encodings)",
                "csr fp32",
                "bitmask fp32",
                "auto fp16",
                "auto fp32 bytes",
            ],
            rows,
        )  # fmt: skip
    )
    md += [
        "",
        "`auto` stores a layer under an N:M pattern as `nm` (kept values + 2-bit in-group indices for M ≤ 4, "
        "per-slot kept bits when a group keeps fewer than N) and under `block:4x4` as `bsr` (block CSR + dense "
        "4×4 values); LeNet's 10-output layer cannot hold 4×4 blocks and is stored as for an unstructured mask.",
    ]
    return "\n".join(md)


# -- CUDA: 2:4 semi-structured vs dense ------------------------------------------------------------------
def measure_cuda(rounds: int) -> tuple[dict[str, Any], str]:
    """A 4096×4096 fp16 Linear with a 2:4 weight: dense F.linear vs the semi-structured weight."""
    import torch.nn.functional as F

    from ticketsearch.sparse.kernels import semi_structured

    g = torch.Generator(device="cuda").manual_seed(0)
    n = 4096
    keep = (torch.rand(n, n // 4, 4, device="cuda", generator=g).argsort(-1) < 2).reshape(n, n)
    w = (torch.randn(n, n, device="cuda", generator=g) * keep).half()
    b = torch.randn(n, device="cuda", generator=g).half()
    reason = semi_structured.semi_structured_unsupported(w)
    rows = []
    for batch in (64, 1024):
        x = torch.randn(batch, n, device="cuda", generator=g).half()
        fns = {"dense": lambda x=x: F.linear(x, w, b)}
        err = None
        if reason is None:
            sw = semi_structured.to_semi_structured(w)
            fns["2:4"] = lambda x=x, sw=sw: F.linear(x, sw, b)
            err = float((fns["2:4"]() - fns["dense"]()).abs().max())
        per: dict[str, list[float]] = {k: [] for k in fns}
        for f in fns.values():
            for _ in range(10):
                f()
        torch.cuda.synchronize()
        keys = list(fns)
        for r in range(rounds):
            for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(50):
                    fns[k]()
                end.record()
                end.synchronize()
                per[k].append(start.elapsed_time(end) / 50)
        row: dict[str, Any] = {
            "batch": batch,
            "dense_ms": statistics.median(per["dense"]),
            "max_abs_diff": err,
        }
        if "2:4" in per:
            row["semi_structured_ms"] = statistics.median(per["2:4"])
            row.update(_ratio_fields("speedup", per, "dense", "2:4"))
        rows.append(row)
    payload = {
        "setup": {"shape": [n, n], "dtype": "float16", "rounds": rounds, "calls_per_round": 50},
        "unsupported": reason,
        "rows": rows,
    }
    md = [
        "# 2:4 semi-structured vs dense on CUDA: a 4096×4096 fp16 Linear",
        "",
        f"`torch.sparse.to_sparse_semi_structured` (the sparse tensor cores) against dense `F.linear`; {rounds} "
        "interleaved rounds of 50 calls timed with CUDA events, ratio = median of paired per-round ratios.",
        "",
    ]
    if reason is not None:
        md.append(f"Not measured: {reason}.")
    else:
        md.append(
            md_table(
                ["batch", "dense ms", "2:4 ms", "× vs dense", "max |diff|"],
                [
                    [
                        r["batch"],
                        f"{r['dense_ms']:.4f}",
                        f"{r['semi_structured_ms']:.4f}",
                        _x(r, "speedup"),
                        f"{r['max_abs_diff']:.3g}",
                    ]
                    for r in rows
                ],
            )  # fmt: skip
        )
    return payload, "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated (default: all)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per measurement (default 15)")
    add_output_args(ap, "result name (default: 1thread, or cuda with --device cuda)")
    args = ap.parse_args()
    nets = [n for n in args.nets.split(",") if n]
    bad = [n for n in nets if n not in NETS]
    if bad or args.rounds < 2:
        what = (
            f"unknown net '{bad[0]}' (choose from: {', '.join(NETS)})"
            if bad
            else "--rounds must be at least 2"
        )
        print(f"error: {what}", file=sys.stderr)
        raise SystemExit(2)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda: torch sees no CUDA device here", file=sys.stderr)
            raise SystemExit(2)
        out = ResultWriter(
            "export_patterns",
            args.variant or "cuda",
            results_dir=args.results_dir,
            force_dirty=args.force_dirty,
        )
        payload, md = measure_cuda(args.rounds)
        out.write(payload, md)
        print(md)
        return
    torch.set_num_threads(1)
    out = ResultWriter(
        "export_patterns",
        args.variant or "1thread",
        results_dir=args.results_dir,
        force_dirty=args.force_dirty,
    )
    register_ffn()
    load_start = os.getloadavg()[0]
    layers: list[dict[str, Any]] = []
    net_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in nets:
            for pattern, density in CONFIGS:
                layers += measure_layers(net, pattern, density, args.rounds)
                net_rows.append(measure_net(net, pattern, density, Path(tmp), args.rounds))
                print(f"{net} {pattern} {density}: done (load {os.getloadavg()[0]:.1f})", flush=True)
    loadavg = [load_start, os.getloadavg()[0]]
    md = report(layers, net_rows, loadavg, args.rounds)
    payload = {
        "setup": {
            "nets": {n: {"input_shape": list(NETS[n][0]), "outputs": NETS[n][1]} for n in nets},
            "configs": [list(c) for c in CONFIGS],
            "batches": list(BATCHES),
            "threads": 1,
            "rounds": args.rounds,
            "target_2_4_batch1": TARGET,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_1min_start_end": loadavg,
        },
        "verdict": verdict(layers, net_rows),
        "layers": layers,
        "nets": net_rows,
    }
    out.write(payload, md)
    print(md)


if __name__ == "__main__":
    main()
