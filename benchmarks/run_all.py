"""`make bench`: the quick speed benchmarks (minutes on 2 cores). The long accuracy runs are listed, not run.

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
LONG = {
    "imp_lenet_mnist": "IMP on LeNet-300-100/MNIST, 16 levels × 2 seeds + reinit controls (about 1 h on 2 cores)",
    "scorers_mnist": "SNIP/GraSP/SynFlow/magnitude/random at SNIP's setup, 3 seeds, SGD and Adam rows "
    "(the SGD grid is also the suite: ticketsearch bench --suite snip-paper)",
    "supermask_mnist": "edge-popup at 10-70% and Bernoulli on MNIST, 2 seeds (about 4 min)",
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
        "\nLonger accuracy benchmarks (run them by hand from the repository root; they resume if interrupted):"
    )
    for name, what in LONG.items():
        print(f"  python -m benchmarks.{name}  # {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
