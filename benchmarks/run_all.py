"""`make bench-speed`: the quick speed benchmarks (minutes on 2 cores). The accuracy grids are bench suites,
listed here, not run.

Runs either way, from anywhere (standard library only, so it needs no import path set up):

    python benchmarks/run_all.py
    python -m benchmarks.run_all

Each benchmark runs as ``python -m benchmarks.<name>`` from the repository root and writes
benchmarks/results/<name>/<variant>.{json,md}; ratios are always measured within one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    ["masking_overhead", "--rounds", "3", "--repeats", "100"],
    # LeNet only: writes the variant lenet_300_100_2threads (the committed 2threads has Conv-6 too)
    ["supermask_speed", "--models", "lenet_300_100", "--threads", "2"],
]
OPENLTH = Path("/tmp/open_lth")  # a checkout of facebookresearch/open_lth (see openlth_speed.py's docstring)
# the accuracy grids are suites of `ticketsearch bench` (the one-off scripts that ran them were removed)
LONG = {
    "imp-lenet": "IMP on LeNet-300-100/MNIST, 15 levels × 2 seeds, each beside its reinit control",
    "snip-paper": "SNIP/GraSP/SynFlow/magnitude/random at SNIP's setup, SGD, 3 seeds, sanity checks",
    "snip-paper-adam": "SNIP's Adam row at 90% sparsity, 3 seeds",
    "supermask-lenet": "edge-popup at 10-70% and Bernoulli on MNIST and Fashion-MNIST, 2 seeds",
    "supermask-mnist1d": "edge-popup and Bernoulli on MNIST-1D (MLP, CNN) at 10, 100 and 300 epochs",
    "smallest-lenet": "smallest tickets within 0.5 points of dense, early-bird beside IMP at 20%",
}


def quick_benchmarks() -> list[list[str]]:
    runs = [list(r) for r in QUICK]
    if OPENLTH.is_dir():
        runs.append(["openlth_speed", "--openlth", str(OPENLTH), "--repeats", "2"])
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    if args.list:
        for name, *rest in quick_benchmarks():
            print(" ".join(["python", "-m", f"benchmarks.{name}", *rest]))
        return 0
    for name, *rest in quick_benchmarks():
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *rest]
        print(f"== python -m benchmarks.{name} {' '.join(rest)}", flush=True)
        r = subprocess.run(cmd, cwd=REPO)
        if r.returncode != 0:
            return r.returncode
    print(
        "\nAccuracy grids (bench suites; run them by hand from the repository root, they resume if "
        "interrupted; each record's report.md prints its exact command):"
    )
    for name, what in LONG.items():
        out = f"benchmarks/results/{name.replace('-', '_')}"
        print(
            f"  python -m ticketsearch bench --suite {name} --root benchmarks/runs --out {out} "
            f"--data-root ../shared/datasets --workers 2  # {what}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
