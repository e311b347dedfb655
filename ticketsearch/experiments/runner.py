"""Run a ticket search end to end with persistence: IMP levels, one-shot scorers, learned supermasks.

Each level is a directory; a finished level (``result.json``) is loaded, never recomputed; a level in
progress resumes from its ``checkpoint.pt``. On CPU a killed and resumed run ends with the same masks and
metrics as an uninterrupted one, because model init is stored (``init.safetensors``), batches are a pure
function of (seed, iteration), and checkpoints hold the full optimizer state.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams, TrainingHparams, to_iterations
from ..core.mask import Mask
from ..core.select import check_density
from ..sparse import apply_mask, get_mask, output_parameter, prunable_shapes
from ..training.imp import check_rates, levels_for_density, prune, reset_to
from ..training.loop import TrainResult, TrainState, evaluate, train
from .rundir import LevelDir, RunDir, load_state, save_state

__all__ = ["RunOptions", "RunSummary", "run_find", "train_mask", "resolve_device", "CONTROLS", "method_kind"]

CONTROLS = ("reinit", "random_mask")
_CONTROL_SEED_OFFSET = 1_000_003
_FRESH_INIT_SEED_OFFSET = 7_000_001


@dataclass
class RunOptions:
    """Where and how a run executes; none of this changes the result, so none of it is hashed."""

    root: Path = Path("runs")
    data_root: str | None = None
    download: bool = False  # fetch missing MNIST/Fashion-MNIST through torchvision (only when asked)
    device: str = "auto"
    progress: bool | str = "auto"
    controls: tuple[str, ...] = ()
    then_train: bool = False
    baseline: bool = False  # one-shot/learned methods: also train the dense net (level_0)
    then_train_hp: TrainingHparams | None = None  # learned methods: None = the model's recipe


@dataclass
class RunSummary:
    run_dir: Path
    seed: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device '{name}' (choose from: auto, cpu, cuda)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here; use --device cpu")
    return torch.device(name)


def method_kind(method: str) -> str:
    from ..scorers import METHODS

    return METHODS.get(method).kind


def _build_model(hp: RunHparams, data: Any, seed: int, device: torch.device) -> nn.Module:
    from ..models import create_model

    torch.manual_seed(seed)
    model = create_model(hp.model.model, tuple(data.input_shape), int(data.num_classes), init=hp.model.init)
    return model.to(device)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_data(hp: RunHparams, seed: int, opts: RunOptions, device: torch.device) -> Any:
    from ..data import load_dataset

    val = hp.dataset.val_size
    kwargs: dict[str, Any] = {} if val < 0 else {"val_size": int(val) if val >= 1 else float(val)}
    return load_dataset(
        hp.dataset.dataset, root=opts.data_root, seed=seed, device=device, download=opts.download, **kwargs
    )


def _row(level: int, mask: Mask, res: dict[str, Any], path: Path) -> dict[str, Any]:
    return {"level": level, "density": mask.density, "mask": str(path), **res}


class _Run:
    """State shared by the methods' level loops."""

    def __init__(self, hp: RunHparams, seed: int, opts: RunOptions, *, init_seed: int | None = None) -> None:
        self.hp, self.seed, self.opts = hp, seed, opts
        self.device = resolve_device(opts.device)
        self.run = RunDir(opts.root, hp).create()
        self.rep = self.run.replicate(seed)
        self.data = _load_data(hp, seed, opts, self.device)
        self.model = _build_model(hp, self.data, seed if init_seed is None else init_seed, self.device)
        init_path = self.rep / "init.safetensors"
        if init_path.is_file():  # resume: the stored init, bit for bit
            self.model.load_state_dict(load_state(init_path, self.device))
        else:
            save_state(init_path, self.model.state_dict())
        self.init_state = load_state(init_path, self.device)
        self.shapes = prunable_shapes(self.model)
        if not self.shapes:
            raise ConfigError(f"model '{hp.model.model}' has no prunable (Linear/Conv2d) layers")

    def mask_metadata(self, **extra: Any) -> dict[str, Any]:
        hp = self.hp
        return {
            "model": hp.model.model,
            "dataset": hp.dataset.dataset,
            "method": hp.pruning.method,
            "seed": self.seed,
            "hparams_hash": hp.hash(),
            "hparams": hp.to_dict(),
            "input_shape": list(self.data.input_shape),
            "num_classes": int(self.data.num_classes),
            "init": str(Path("..") / "init.safetensors"),
            **extra,
        }

    def train_level(
        self,
        level: LevelDir,
        model: nn.Module,
        hp: TrainingHparams | None = None,
        *,
        desc: str,
        on_step: Any = None,
    ) -> TrainResult:
        ck = level.load_checkpoint()
        start = TrainState.from_dict(ck) if ck is not None else None
        level.reset_metrics(start.history if start is not None else [])
        return train(
            model,
            self.data,
            hp or self.hp.training,
            seed=self.seed,
            start=start,
            save_checkpoint=lambda st: level.save_checkpoint(st.to_dict()),
            log=level.log,
            on_step=on_step,
            progress=self.opts.progress,
            desc=desc,
        )

    def finish_level(
        self, level: LevelDir, model: nn.Module, res: TrainResult, **extra: Any
    ) -> dict[str, Any]:
        save_state(level.final_path, model.state_dict())
        out = {
            "test_acc": res.final.get("test_acc"),
            "test_loss": res.final.get("test_loss"),
            "val_acc": res.final.get("val_acc"),
            "es_iteration": res.best.get("iteration"),
            "es_test_acc": res.best.get("test_acc"),
            "es_val_loss": res.best.get("val_loss"),
            "iterations": res.iterations,
            "wall_time": res.wall_time,
            "passes": res.passes,
            **extra,
        }
        level.write_result(out)
        return out

    def run_controls(
        self, k: int, level: LevelDir, mask: Mask, start_state: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Controls of Frankle & Carbin / Frankle et al. 2021 beside a ticket: same mask + fresh init, and
        a random mask with the same per-layer densities on the ticket's init."""
        out: dict[str, Any] = {}
        for name in self.opts.controls:
            sub = level.sub(f"control_{name}")
            sub.path.mkdir(parents=True, exist_ok=True)
            if sub.done():
                out[name] = sub.result()
                continue
            cseed = self.seed + _CONTROL_SEED_OFFSET * (k + 1)
            if name == "reinit":
                model = _build_model(self.hp, self.data, cseed, self.device)
                cmask = mask
                apply_mask(model, cmask)
            elif name == "random_mask":
                cmask = mask.shuffled(torch.Generator().manual_seed(cseed))
                model = copy.deepcopy(self.model)
                reset_to(model, start_state, cmask)
            else:
                raise ConfigError(f"unknown control '{name}' (choose from: {', '.join(CONTROLS)})")
            sub.save_mask(cmask, **self.mask_metadata(control=name, level=k))
            if name == "reinit":
                save_state(sub.path / "init.safetensors", model.state_dict())
            res = self.train_level(sub, model, desc=f"level {k} {name}")
            out[name] = self.finish_level(sub, model, res, density=cmask.density)
        return out


def _imp(r: _Run) -> list[dict[str, Any]]:
    hp = r.hp
    check_rates(hp.pruning)
    output = output_parameter(r.model)
    levels = hp.pruning.rounds or levels_for_density(hp.pruning, r.shapes, output, hp.pruning.density)
    rewind_path = r.rep / "rewind.safetensors"
    rewind_it = to_iterations(hp.pruning.rewind, _steps_per_epoch(r), name="rewind")
    budget = to_iterations(hp.training.budget, _steps_per_epoch(r), name="budget")
    if rewind_it > budget:
        raise ConfigError(
            f"rewind point {hp.pruning.rewind!r} is past the training budget {hp.training.budget!r}"
        )

    def save_rewind(it: int, model: nn.Module) -> None:
        if it == rewind_it and not rewind_path.is_file():
            save_state(rewind_path, model.state_dict())

    rows: list[dict[str, Any]] = []
    mask = Mask.ones(r.shapes)
    cost = {"wall_time": 0.0, "forward": 0, "backward": 0}
    prev_final: dict[str, torch.Tensor] | None = None
    for k in range(levels + 1):
        level = r.run.level(r.seed, k)
        if level.done():
            mask = level.load_mask()
            res = level.result()
            prev_final = load_state(level.final_path, r.device)
        else:
            if k > 0:
                assert prev_final is not None
                trained = copy.deepcopy(r.model)
                trained.load_state_dict(prev_final)
                apply_mask(trained, mask)
                mask = prune(hp.pruning, trained, mask)
            if rewind_it > 0 and k > 0:
                start_state = load_state(rewind_path, r.device)
            else:
                start_state = r.init_state
            reset_to(r.model, start_state, mask)
            level.save_mask(mask, **r.mask_metadata(level=k))
            result = r.train_level(
                level,
                r.model,
                desc=f"level {k} ({mask.density:.1%})",
                on_step=save_rewind if k == 0 and rewind_it > 0 else None,
            )
            c = {
                "wall_time": cost["wall_time"] + result.wall_time,
                "forward": cost["forward"] + result.passes["forward"],
                "backward": cost["backward"] + result.passes["backward"],
            }
            res = r.finish_level(level, r.model, result, density=mask.density, cost_to_find=c)
            prev_final = _state(r.model)
        cost = res.get("cost_to_find", cost)
        if k > 0 and r.opts.controls:
            start_state = load_state(rewind_path, r.device) if rewind_it > 0 else r.init_state
            res = {**res, "controls": r.run_controls(k, level, mask, start_state)}
        rows.append(_row(k, mask, res, level.mask_path))
    return rows


def _steps_per_epoch(r: _Run) -> int:
    n = int(r.data.x_train.shape[0])
    return max(1, -(-n // r.hp.training.batch_size))


def _baseline(r: _Run) -> dict[str, Any]:
    level = r.run.level(r.seed, 0)
    mask = Mask.ones(r.shapes)
    if not level.done():
        model = copy.deepcopy(r.model)
        reset_to(model, r.init_state, mask)
        level.save_mask(mask, **r.mask_metadata(level=0))
        res = r.finish_level(level, model, r.train_level(level, model, desc="dense"), density=1.0)
    else:
        res = level.result()
    return _row(0, mask, res, level.mask_path)


def _score_batches(r: _Run) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from ..data import Batcher

    p = r.hp.pruning
    bs = p.score_batch_size or r.hp.training.batch_size
    if p.score_batches < 1:
        raise ConfigError(f"score_batches must be ≥ 1, got {p.score_batches}")
    b = Batcher(r.data.x_train, r.data.y_train, bs, seed=r.seed + 7)
    return [b.batch(i) for i in range(p.score_batches)]


def _oneshot(r: _Run) -> list[dict[str, Any]]:
    from ..scorers import METHODS
    from ..scorers.iterative import find_mask

    hp = r.hp
    rows = [_baseline(r)] if r.opts.baseline else []
    level = r.run.level(r.seed, 1)
    if level.done():
        mask = level.load_mask()
        res = level.result()
    else:
        if level.mask_path.is_file():  # scored before a crash: scoring is deterministic, reuse it
            mask = level.load_mask()
            find_cost = mask.metadata.get("cost_to_find", {})
        else:
            scorer = METHODS.get(hp.pruning.method)()
            from ..scorers.base import ScoringContext

            batches = [] if scorer.data_free else _score_batches(r)
            t0 = time.perf_counter()
            mask, find_cost = find_mask(
                scorer,
                r.model,
                batches,
                hp,
                context=ScoringContext(data=r.data, seed=r.seed, progress=r.opts.progress),
            )
            find_cost = {
                "wall_time": time.perf_counter() - t0,
                **{k: v for k, v in find_cost.items() if k != "wall_time"},
            }
            level.save_mask(mask, **r.mask_metadata(level=1, cost_to_find=find_cost))
        reset_to(r.model, r.init_state, mask)
        result = r.train_level(level, r.model, desc=f"{hp.pruning.method} ({mask.density:.1%})")
        res = r.finish_level(level, r.model, result, density=mask.density, cost_to_find=find_cost)
    if r.opts.controls:
        res = {**res, "controls": r.run_controls(1, level, mask, r.init_state)}
    rows.append(_row(1, mask, res, level.mask_path))
    return rows


def _learned(r: _Run) -> list[dict[str, Any]]:
    from ..scorers.supermask import run_learned

    hp = r.hp
    rows = [_baseline(r)] if r.opts.baseline else []
    level = r.run.level(r.seed, 1)
    if level.done():
        mask = level.load_mask()
        res = level.result()
        init_state = load_state(level.path / "init.safetensors", r.device)
        if any(k.endswith("running_mean") for k in init_state):  # BN made non-affine by the method
            from ..sparse.supermask import make_bn_nonaffine

            bn_affine = [
                n
                for n, m in r.model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            ]
            if bn_affine and f"{bn_affine[0]}.weight" not in init_state:
                make_bn_nonaffine(r.model)
    else:
        ck = level.load_checkpoint()  # scores + optimizer state of a run in progress
        start = TrainState.from_dict(ck) if ck is not None else None
        level.reset_metrics(start.history if start is not None else [])
        torch.manual_seed(r.seed)
        lr = run_learned(
            hp.pruning.method,
            r.model,
            r.data,
            hp,
            seed=r.seed,
            log=level.log,
            progress=r.opts.progress,
            start=start,
            save_checkpoint=lambda st: level.save_checkpoint(st.to_dict()),
        )
        # run_learned already selected with core.select (same density, scope, distribution, guard)
        assert lr.mask is not None
        mask = lr.mask
        apply_mask(lr.model, mask)
        untrained = evaluate(lr.model, r.data.x_test, r.data.y_test)
        init_state = {k: v.detach().clone() for k, v in lr.init_state.items()}
        save_state(level.path / "init.safetensors", init_state)
        save_state(level.final_path, lr.model.state_dict())
        level.save_mask(mask, **r.mask_metadata(level=1, init="init.safetensors"))
        metrics = dict(lr.metrics)
        best = metrics.get("supermask_best") or {}
        res = {
            "es_iteration": best.get("iteration"),
            "es_test_acc": best.get("test_acc"),
            "test_acc": untrained["acc"],
            "test_loss": untrained["loss"],
            "untrained_test_acc": untrained["acc"],
            "weights_trained": False,
            "cost_to_find": {
                "wall_time": metrics.get("wall_time"),
                "forward": metrics.get("passes", {}).get("forward"),
                "backward": metrics.get("passes", {}).get("backward"),
            },
            **{k: v for k, v in metrics.items() if k not in ("passes",)},
        }
        level.write_result(res)
    if r.opts.then_train:
        from .presets import default_training

        sub = level.sub("then_train")
        sub.path.mkdir(parents=True, exist_ok=True)
        if sub.done():
            tres = sub.result()
        else:
            model = copy.deepcopy(r.model)
            reset_to(model, init_state, mask)
            tres = r.finish_level(
                sub,
                model,
                r.train_level(
                    sub, model, r.opts.then_train_hp or default_training(hp.model.model), desc="then-train"
                ),
                density=mask.density,
            )
        res = {**res, "then_train": tres}
    rows.append(_row(1, mask, res, level.mask_path))
    return rows


def run_find(hp: RunHparams, *, seed: int = 0, opts: RunOptions | None = None) -> RunSummary:
    """Find (and train) a ticket with ``hp.pruning.method``; resumable; returns one row per level."""
    opts = opts or RunOptions()
    check_density(hp.pruning.density)
    for c in opts.controls:
        if c not in CONTROLS:
            raise ConfigError(f"unknown control '{c}' (choose from: {', '.join(CONTROLS)})")
    kind = method_kind(hp.pruning.method)
    r = _Run(hp, seed, opts)
    if kind == "imp":
        rows = _imp(r)
    elif kind == "learned":
        rows = _learned(r)
    else:
        rows = _oneshot(r)
    return RunSummary(run_dir=r.run.path, seed=seed, rows=rows)


def train_mask(
    mask_path: Path,
    hp: RunHparams,
    *,
    seed: int = 0,
    init: str = "source",
    opts: RunOptions | None = None,
) -> RunSummary:
    """Train a given ticket: the mask's own init (``source``) or a fresh one from ``seed`` (``fresh``)."""
    from ..core.hparams import stable_hash

    opts = opts or RunOptions()
    if init not in ("source", "fresh"):
        raise ConfigError(f"unknown init '{init}' (choose from: source, fresh)")
    mask = Mask.load(mask_path)
    # a fresh init must differ from the ticket's own even when --seed equals the seed that made the mask
    # (model init is drawn from the seed): it comes from a seed derived from --seed, never --seed itself
    init_seed = seed + _FRESH_INIT_SEED_OFFSET if init == "fresh" else None
    mask_hash = stable_hash(
        {
            "mask": mask.layer_counts(),
            "file": mask.metadata.get("hparams_hash"),
            "init": init,
            "init_seed": init_seed,
        }
    )
    hp = hp.replace(method_args=tuple(sorted({**dict(hp.method_args), "mask": mask_hash}.items())))
    r = _Run(hp, seed, opts, init_seed=init_seed)
    mask.check_shapes(r.shapes, what=f"model '{hp.model.model}' on '{hp.dataset.dataset}'")
    level = r.run.level(seed, 1)
    if level.done():
        return RunSummary(r.run.path, seed, [_row(1, mask, level.result(), level.mask_path)])
    state = r.init_state
    if init == "source":
        src = mask.metadata.get("init")
        if not src:
            raise ConfigError(f"mask '{mask_path}' records no init; use --init fresh")
        p = (Path(mask_path).parent / src).resolve()
        if not p.is_file():
            raise ConfigError(f"the mask's init file '{p}' is missing; use --init fresh")
        state = load_state(p, r.device)
    reset_to(r.model, state, mask)
    save_state(level.path / "init.safetensors", state)  # the init this ticket trained from, whichever it was
    level.save_mask(
        get_mask(r.model),
        **r.mask_metadata(level=1, source_mask=str(mask_path), init_mode=init, init="init.safetensors"),
    )
    res = r.finish_level(
        level, r.model, r.train_level(level, r.model, desc="train ticket"), density=mask.density
    )
    return RunSummary(r.run.path, seed, [_row(1, mask, res, level.mask_path)])
