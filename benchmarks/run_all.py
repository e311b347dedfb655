"""`make bench`: the quick speed benchmarks (minutes on 2 cores). The long accuracy runs are listed, not run.

Each script writes benchmarks/results/<name>.{json,md}; ratios are always measured within one run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = [
    ["masking_overhead.py", "--rounds", "3", "--repeats", "100"],
    [
        "supermask_speed.py",
        "--models",
        "lenet_300_100",
        "--threads",
        "2",
        "--out",
        "results/supermask_speed_2threads",
    ],
]
OPENLTH = Path("/tmp/open_lth")  # a checkout of facebookresearch/open_lth (see openlth_speed.py's docstring)
if OPENLTH.is_dir():
    QUICK.append(["openlth_speed.py", "--openlth", str(OPENLTH), "--repeats", "2"])
LONG = {
    "imp_lenet_mnist.py": "IMP on LeNet-300-100/MNIST, 16 levels × 2 seeds + reinit controls (about 1 h on 2 cores)",
    "scorers_mnist.py": "SNIP/GraSP/SynFlow/magnitude/random at SNIP's setup, 3 seeds (--jobs N to parallelise)",
    "supermask_mnist.py": "edge-popup at 10-70% and Bernoulli on MNIST, 2 seeds (about 4 min)",
}


def main() -> int:
    for args in QUICK:
        print(f"== {' '.join(args)}", flush=True)
        r = subprocess.run([sys.executable, *args], cwd=HERE)
        if r.returncode != 0:
            return r.returncode
    print("\nLonger accuracy benchmarks (run them by hand, they resume if interrupted):")
    for name, what in LONG.items():
        print(f"  python benchmarks/{name}  # {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
