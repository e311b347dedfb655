"""What the training loop itself costs per step with a mask, fixed or moving: whole ``train()`` calls timed.

``speed.py`` and ``masking_overhead.py`` time a hand-built step; this times :func:`ticketsearch.training.train`
as methods call it (batching, learning-rate schedule, hooks, the masked optimizer update), so a change to the
loop shows here. LeNet-300-100 at batch 60 on MNIST-shaped random data (60 000 rows; a 60-row test set and no
validation set, so evaluation at the start and the end is negligible), SGD with momentum, one torch thread.
One sample is one ``train()`` call of ``--steps`` steps; modes are sampled round-robin in one run and the
ratio is to the dense model's call:

* ``dense``           — no mask;
* ``masked``          — a fixed random layerwise mask at density 0.2 (``inplace`` backend): what every
  fixed-mask method trains;
* ``masked_schedule`` — the same with a :class:`~ticketsearch.training.MaskSchedule` that never changes the
  mask (what the hook costs a step when nothing moves);
* ``gmp``             — gradual magnitude pruning from dense to 0.2 over the call, pruning 20 times (every steps/20)
  (a moving mask: selection, optimizer-state and gradient-mask rebuilds on every change).

The last two need the mask-schedule hook; on code from before it they are skipped, so the same script
measures the loop before and after a change: copy it (with ``_common.py`` and ``_writer.py``) into a checkout
of the older commit and run it there (``--force-dirty``: that checkout then holds files its commit lacks,
and the record says so). From the repository root:

    python -m benchmarks.loop_overhead --variant cpu                       # this checkout
    git worktree add /tmp/before <commit> && cp benchmarks/{loop_overhead,_common,_writer}.py \\
      /tmp/before/benchmarks/ && (cd /tmp/before && python -m benchmarks.loop_overhead --force-dirty \\
      --variant cpu_before --results-dir $OLDPWD/benchmarks/results)
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import subprocess
from pathlib import Path

import torch

import ticketsearch
from ticketsearch.core import select
from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, masked_layers, prunable_parameters
from ticketsearch.training import train

from ._common import fmt_ratio, interleaved_samples, paired_ratios
from ._writer import ResultWriter, add_output_args, md_table


class _Data:
    """MNIST-shaped tensors with the attributes ``train`` reads."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x_train = torch.randn(n, 1, 28, 28, generator=g)
        self.y_train = torch.randint(0, 10, (n,), generator=g)
        self.x_val, self.y_val = self.x_train[:0], self.y_train[:0]
        self.x_test, self.y_test = self.x_train[:60], self.y_train[:60]


def _code_commit() -> str | None:
    """The commit of the checkout whose ``ticketsearch`` is imported (not necessarily this script's)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(ticketsearch.__file__).parent), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500, help="steps per train() call (default 500)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="calls per mode per round (default 3)")
    add_output_args(ap, "result name (default: cpu)")
    args = ap.parse_args()
    out = ResultWriter(
        "loop_overhead", args.variant or "cpu", results_dir=args.results_dir, force_dirty=args.force_dirty
    )
    torch.set_num_threads(1)
    data = _Data(60_000)
    hp = TrainingHparams(
        budget=f"{args.steps}it",
        eval_every=f"{args.steps}it",
        batch_size=60,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
    )
    torch.manual_seed(0)
    base = create_model("lenet_300_100", (1, 28, 28), 10)
    init = {k: v.clone() for k, v in base.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    mask = select(
        {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(base).items()},
        0.2,
        scope="layerwise",
    )
    has_schedule = "schedule" in inspect.signature(train).parameters

    def call(masked: bool, schedule_of=None):
        def run() -> None:
            for _, layer in masked_layers(base):
                layer.set_mask(None)
            base.load_state_dict(init)
            if masked:
                apply_mask(base, mask)
            kw = {"schedule": schedule_of()} if schedule_of is not None else {}
            train(base, data, hp, seed=0, progress=False, **kw)

        return run

    modes = {"dense": call(False), "masked": call(True)}
    skipped = []
    if has_schedule:
        from ticketsearch.methods.gmp import GMPSchedule
        from ticketsearch.training import MaskSchedule

        modes["masked_schedule"] = call(True, MaskSchedule)
        modes["gmp"] = call(
            False,
            lambda: GMPSchedule(
                0.2, 0, args.steps, max(1, args.steps // 20), scope="layerwise", distribution="uniform"
            ),
        )
    else:
        skipped = ["masked_schedule", "gmp"]
    samples = interleaved_samples(modes, rounds=args.rounds, repeats=args.repeats, warmup=2)
    paired = paired_ratios(samples, "dense", rounds=args.rounds)
    per_step = {k: statistics.median(v) / args.steps for k, v in samples.items()}
    results = [
        {
            "mode": k,
            "ms_per_step": per_step[k],
            "ratio_vs_dense": paired[k]["median"],
            "ratio_quartiles": [paired[k]["q1"], paired[k]["q3"]],
            "ratio_of_medians": per_step[k] / per_step["dense"],
        }
        for k in modes
    ]
    code = _code_commit()
    md = "# The training loop's cost per step, fixed and moving masks (CPU, LeNet-300-100, batch 60)\n\n"
    md += (
        f"Whole `train()` calls of {args.steps} steps, median of {args.rounds}×{args.repeats} calls per mode "
        f"sampled round-robin in one run, one torch thread; ticketsearch imported from commit `{code}`"
        ".\n\n"
    )
    md += md_table(
        [
            "mode",
            "ms per step (median)",
            "× dense (median of paired per-round ratios [quartiles])",
            "ratio of medians",
        ],
        [
            [
                r["mode"],
                f"{r['ms_per_step']:.3f}",
                fmt_ratio(paired[r["mode"]]),
                f"{r['ratio_of_medians']:.3f}×",
            ]
            for r in results
        ],
    )
    if skipped:
        md += f"\n\nNot measured (this code has no mask-schedule hook): {', '.join(skipped)}.\n"
    md += "\n\nTarget (issue 19): a fixed mask ≤ 1.05× dense, with or without the hook.\n"
    out.write({"results": results, "steps": args.steps, "code_commit": code, "skipped": skipped}, md)
    print(md)


if __name__ == "__main__":
    main()
