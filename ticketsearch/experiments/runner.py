"""Persistence, resume, locking and controls for every method; the algorithms live in ``ticketsearch.methods``.

Each level is a directory; a finished level (``result.json``) is loaded, never recomputed; a level in
progress resumes from its ``checkpoint.pt``. On CPU a killed and resumed run ends with the same masks and
metrics as an uninterrupted one, because model init is stored (``init.safetensors``), batches are a pure
function of (seed, iteration), and checkpoints hold the full optimizer state.

Order of work, so that bad input never leaves a file behind: every hyperparameter is validated, the data
is loaded and the model built (a missing file or a shape that does not fit fails here); only then is the
run directory created, and the replicate locked. A user error raised before any level finished removes
what this call created.

Under torchrun (``RunOptions.world``) every rank builds the same run and trains its slice of each batch;
rank 0 alone reads and writes the run directory (the others receive what it read), masks are rank 0's on
every rank, and a user error on any rank while the run is built stops every rank in one line.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError, TicketsearchError
from ..core.hparams import RunHparams, TrainingHparams, check_seed, stable_hash
from ..core.mask import Mask
from ..methods import LevelRow, Method, get_method
from ..sparse import get_mask, prunable_shapes, resolve_backend, set_backend
from ..training.distributed import SINGLE, DistributedError, World
from ..training.imp import reset_to
from ..training.loop import TrainResult, TrainState, train
from ..training.schedule import MaskSchedule
from .controls import CONTROLS
from .rundir import LevelDir, RunDir, load_state, save_state

__all__ = [
    "RunOptions",
    "RunSummary",
    "Run",
    "opened",
    "run_find",
    "train_mask",
    "resolve_device",
    "mask_digest",
    "file_digest",
    "ticket_init",
]

# a fresh init must differ from the ticket's own even when --seed equals the seed that made the mask
_FRESH_INIT_SEED_OFFSET = 7_000_001


@dataclass
class RunOptions:
    """Where and how a run executes; none of this changes the result, so none of it is hashed."""

    root: Path = Path("runs")
    data_root: str | None = None
    download: bool = False  # fetch missing MNIST/Fashion-MNIST through torchvision (only when asked)
    device: str = "auto"
    backend: str = "auto"  # the masked kernel (sparse.resolve_backend); the chosen one is in every result
    graph: bool = False  # CUDA: replay each training step as a captured CUDA graph where train() allows it
    progress: bool | str = "auto"
    controls: tuple[str, ...] = ()
    then_train: bool = False
    baseline: bool = False  # one-shot/learned methods: also train the dense net (level_0)
    then_train_hp: TrainingHparams | None = None  # learned methods: None = the model's recipe
    # called with (level folder, record) after each evaluation of a level's own training (not of controls
    # or then-train), so a study can report intermediate accuracy and stop a trial (optuna.TrialPruned)
    on_eval: Callable[[Path, dict[str, Any]], None] | None = None
    world: World = SINGLE  # torchrun: this process's rank; SINGLE for one process
    # recompute finished levels made by other code (core.provenance); otherwise they are reused as they are
    rerun_stale: bool = False


@dataclass
class RunSummary:
    run_dir: Path
    seed: int
    rows: list[LevelRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "seed": self.seed, "rows": [r.to_dict() for r in self.rows]}


def resolve_device(name: str, world: World = SINGLE) -> torch.device:
    """The device of ``--device``; under torchrun, CUDA means ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device '{name}' (choose from: auto, cpu, cuda)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here; use --device cpu")
    if world.active and name.startswith("cuda"):
        if name != "cuda":
            raise ConfigError(
                f"device '{name}' names one GPU, but under torchrun each process uses cuda:LOCAL_RANK; "
                "use --device cuda (or auto)"
            )
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def _load_data(hp: RunHparams, seed: int, opts: RunOptions, device: torch.device) -> Any:
    from ..data import load_dataset

    val = hp.dataset.val_size  # validated: a fraction, a whole count, or < 0 for the dataset's default
    kwargs: dict[str, Any] = {} if val < 0 else {"val_size": int(val) if val >= 1 else float(val)}
    return load_dataset(
        hp.dataset.dataset,
        root=opts.data_root,
        seed=seed,
        device=device,
        download=opts.download,
        resize=hp.dataset.resize,
        **kwargs,
    )


def _check_controls(controls: tuple[str, ...]) -> None:
    for c in controls:
        CONTROLS.entry(c)  # unknown → one line with a suggestion


class Run:
    """The :class:`~ticketsearch.methods.RunContext` of one replicate: storage, data, init, shared steps.

    Building it validates and loads everything but writes nothing; :meth:`open` (inside :func:`opened`)
    creates the run directory, takes the replicate's lock and stores (or reloads) the init.
    """

    def __init__(
        self,
        hp: RunHparams,
        seed: int,
        opts: RunOptions,
        *,
        init_seed: int | None = None,
        method: Method | None = None,
    ) -> None:
        self.hp, self.seed, self.opts = hp, check_seed(seed), opts
        self.method = method
        self.world = opts.world
        self.device = resolve_device(opts.device, self.world)
        self.backend = resolve_backend(opts.backend, self.device)
        self.progress = opts.progress if self.world.is_main else False
        self.then_train = opts.then_train
        self.then_train_hp = opts.then_train_hp
        self.baseline = opts.baseline
        self.data = _load_data(hp, seed, opts, self.device)
        self.model = self.build_model(seed if init_seed is None else init_seed)
        self.shapes = prunable_shapes(self.model)
        if not self.shapes:
            raise ConfigError(f"model '{hp.model.model}' has no prunable (Linear/Conv2d) layers")
        self.run = RunDir(
            opts.root,
            hp,
            identity=method.identity(hp) if method is not None else None,
            world=self.world,
            device=self.device,
        )
        self.init_state: dict[str, torch.Tensor] = {}

    # -- storage (rank 0 only under torchrun: every read and write goes through world.on_main) ----------
    def open(self) -> None:
        """Store the init (or reload it, bit for bit, on resume); the run directory exists and is locked."""
        init_path = self.replicate_path() / "init.safetensors"
        model = self.model

        def store_or_load() -> dict[str, torch.Tensor]:
            if not init_path.is_file():
                save_state(init_path, model.state_dict())
            return load_state(init_path, "cpu")

        stored = self.world.on_main("init", store_or_load)
        self.init_state = {k: v.to(self.device) for k, v in stored.items()}
        self.model.load_state_dict(self.init_state)

    def replicate_path(self) -> Path:
        return self.run.replicate(self.seed)

    def level(self, k: int) -> LevelDir:
        level = self.run.level(self.seed, k)
        return (
            level
            if self.opts.on_eval is None
            else _ReportingLevel(level.path, self.opts.on_eval, self.world, self.device)
        )

    def save_state(self, path: Path, state: Mapping[str, torch.Tensor], *, keep: bool = False) -> Path:
        """Write ``state`` to ``path``; ``keep``: a file already there stays (IMP's rewind point)."""

        def write() -> Path:
            return path if keep and path.is_file() else save_state(path, dict(state))

        return self.world.on_main(f"save_state {path.name}", write)  # type: ignore[no-any-return]

    def load_state(self, path: Path) -> dict[str, torch.Tensor]:
        stored = self.world.on_main(f"load_state {path.name}", lambda: load_state(path, "cpu"))
        return {k: v.to(self.device) for k, v in stored.items()}

    def shared_mask(self, mask: Mask) -> Mask:
        """Rank 0's ``mask`` on every rank (torchrun), so every rank prunes and trains the same weights
        even where scoring is not bitwise reproducible across processes; ``mask`` itself in one process."""
        if not self.world.active:
            return mask
        sent = self.world.on_main("share mask", lambda: (mask.cpu(), dict(mask.metadata)))
        if self.world.is_main:
            return mask
        tensors, metadata = sent
        return Mask({n: t.to(self.device) for n, t in tensors.items()}, metadata)

    def build_model(self, seed: int) -> nn.Module:
        from ..models import create_model

        torch.manual_seed(seed)
        model = create_model(
            self.hp.model.model,
            tuple(self.data.input_shape),
            int(self.data.num_classes),
            init=self.hp.model.init,
        ).to(self.device)
        set_backend(model, self.backend)  # copies (levels, controls) keep it; masks attached later use it
        return model

    def mask_metadata(self, **extra: Any) -> dict[str, Any]:
        hp = self.hp
        return {
            "model": hp.model.model,
            "dataset": hp.dataset.dataset,
            "method": hp.pruning.method,
            "seed": self.seed,
            "hparams_hash": self.run.identity,
            "hparams": hp.to_dict(),
            "input_shape": list(self.data.input_shape),
            "num_classes": int(self.data.num_classes),
            "init": str(Path("..") / "init.safetensors"),
            **extra,
        }

    # -- the shared steps -----------------------------------------------------------------------------
    def train_level(
        self,
        level: LevelDir,
        model: nn.Module,
        hp: TrainingHparams | None = None,
        *,
        desc: str,
        on_step: Any = None,
        schedule: MaskSchedule | None = None,
    ) -> TrainResult:
        """Train ``model`` in ``level`` (resuming its checkpoint); a ``schedule`` moves its masks while it
        trains, and its state and the masks go into every checkpoint (see ``training.schedule``)."""
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
            schedule=schedule,
            progress=self.progress,
            desc=desc,
            world=self.world,
            graph=self.opts.graph,
        )

    def finish_level(
        self, level: LevelDir, model: nn.Module, res: TrainResult, **extra: Any
    ) -> dict[str, Any]:
        self.save_state(level.final_path, model.state_dict())
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
            "backend": self.backend,
            "graph": res.graph,  # whether the steps replayed a CUDA graph, and if not, why
            "eager_reason": res.eager_reason,
            **extra,
        }
        level.write_result(out)
        return out

    def then_train_level(
        self, level: LevelDir, start: Mapping[str, torch.Tensor], mask: Mask, hp: TrainingHparams | None
    ) -> dict[str, Any]:
        """The ``then_train`` sub-level of a supermask ticket: its kept weights trained from ``start``."""
        sub = level.sub("then_train")
        if sub.done():
            return sub.result()
        model = copy.deepcopy(self.model)
        reset_to(model, start, mask)
        res = self.train_level(sub, model, hp, desc="then-train")
        return self.finish_level(sub, model, res, density=mask.density)

    def run_controls(
        self, k: int, level: LevelDir, mask: Mask, start_state: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, Any]]:
        """Each requested control beside level ``k``: stored, resumed and trained like a level."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.opts.controls:
            sub = level.sub(f"control_{name}")
            if sub.done():
                out[name] = sub.result()
                continue
            setup = CONTROLS.get(name)().setup(self, k, mask, start_state)
            sub.save_mask(setup.mask, **self.mask_metadata(control=name, level=k))
            if setup.fresh_init:
                self.save_state(sub.path / "init.safetensors", setup.model.state_dict())
            res = self.train_level(sub, setup.model, desc=f"level {k} {name}")
            out[name] = self.finish_level(sub, setup.model, res, density=setup.mask.density)
        return out


class _ReportingLevel(LevelDir):
    """A level whose evaluation records also go to ``RunOptions.on_eval``, after they are logged; an
    exception it raises ends the run like a kill at that evaluation (the last checkpoint resumes)."""

    def __init__(
        self, path: Path, on_eval: Callable[[Path, dict[str, Any]], None], world: World, device: Any = None
    ) -> None:
        super().__init__(path, world, device)
        self._on_eval = on_eval

    def log(self, record: dict[str, Any]) -> None:
        super().log(record)
        self._on_eval(self.path, record)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _drop_stale(run: Run) -> None:
    """``--rerun-stale``: the levels made by other code (and every later one) are removed under the lock,
    so the method recomputes them; said on stderr, since a finished level is otherwise never recomputed."""
    stale = run.run.stale_levels(run.seed)
    if not stale:
        return
    dropped = run.run.drop_stale(run.seed)
    if run.world.is_main and dropped:
        _say(
            f"recomputing level(s) {', '.join(map(str, dropped))} of {run.run.path.name}/replicate_{run.seed}: "
            f"level {stale[0][0]} was {stale[0][1]}"
        )


@contextlib.contextmanager
def opened(run: Run) -> Iterator[Run]:
    """Create, lock and clean the replicate; on a user error before any level finished, remove what this
    call created, so a bad value never leaves a started run directory behind. A lost torchrun rank is not
    a bad value: its checkpoints stay, for the rerun to resume from. Under torchrun rank 0 alone cleans."""
    owner = run.world.is_main
    run_existed = run.run.path.exists()
    rep = run.run.path / f"replicate_{run.seed}"
    rep_existed = rep.exists()
    try:
        run.run.create()
        with run.run.lock(run.seed, on_wait=_say):
            run.run.clean_stale_temps(run.seed)
            if run.opts.rerun_stale:
                _drop_stale(run)
            try:
                run.open()
                yield run
            except DistributedError:
                raise
            except TicketsearchError:
                if owner and not rep_existed and not any(rep.rglob("result.json")):
                    shutil.rmtree(rep, ignore_errors=True)
                raise
    except DistributedError:
        raise
    except TicketsearchError:
        if (
            owner
            and not run_existed
            and not any(p.name.startswith("replicate_") for p in run.run.path.glob("*"))
        ):
            shutil.rmtree(run.run.path, ignore_errors=True)
        raise


def prepare(hp: RunHparams, opts: RunOptions) -> tuple[Method, RunHparams]:
    """The method and the canonical hparams of a run, every value validated; nothing is written."""
    method = get_method(hp.pruning.method)
    hp = method.canonical(hp)
    method.validate(hp)
    _check_controls(opts.controls)
    # the method says what its ticket means: a control that retrains the weights of a ticket whose weights
    # never trained compares nothing, and --then-train is only a question for such a ticket
    if opts.controls and not method.accepts_controls:
        raise ConfigError(
            f"--controls do not apply to method '{method.name}': its ticket is learned on untrained weights, "
            "which a control would retrain; drop --controls"
        )
    if opts.then_train and not method.accepts_then_train:
        raise ConfigError(
            f"--then-train applies to methods whose ticket is learned on untrained weights (supermasks), "
            f"not to '{method.name}'; drop --then-train"
        )
    if opts.world.active and not method.distributed:
        raise ConfigError(
            f"method '{method.name}' does not run under torchrun (its masks or files are not yet kept "
            "identical across processes); run it in one process, or use one of the methods that do: imp and "
            "the one-shot scorers"
        )
    opts.world.check_batch_size(hp.training.batch_size)
    return method, hp


def run_find(hp: RunHparams, *, seed: int = 0, opts: RunOptions | None = None) -> RunSummary:
    """Find (and train) a ticket with ``hp.pruning.method``; resumable; returns one row per level."""
    opts = opts or RunOptions()

    def build() -> tuple[Method, Run]:
        method, canon = prepare(hp, opts)
        return method, Run(canon, seed, opts, method=method)

    method, run = opts.world.agree(build)  # torchrun: a rank that cannot build it stops every rank
    with opened(run):
        rows = method.run_levels(run)
    return RunSummary(run_dir=run.run.path, seed=seed, rows=rows)


def mask_digest(mask: Mask) -> str:
    """sha256 of a mask's content (layer names, shapes, bits), independent of dict order."""
    h = hashlib.sha256()
    for name in sorted(mask):
        t = mask[name].detach().to("cpu", torch.uint8).contiguous()
        h.update(f"{name}:{list(t.shape)}:".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# adapt(mask, model, start_state) -> (mask, start_state, notes): how a ticket is fitted to another dataset
Adapt = Callable[
    [Mask, nn.Module, "dict[str, torch.Tensor] | None"],
    "tuple[Mask, dict[str, torch.Tensor] | None, dict[str, Any]]",
]


def ticket_init(mask_path: Path, mask: Mask) -> Path:
    """The stored state a ticket trained from (its sidecar's ``init``: the init, or IMP's rewind point)."""
    src = mask.metadata.get("init")
    if not src:
        raise ConfigError(f"mask '{mask_path}' records no init; use --init-from fresh")
    path = (Path(mask_path).parent / str(src)).resolve()
    if not path.is_file():
        raise ConfigError(f"the mask's init file '{path}' is missing; use --init-from fresh")
    return path


def _check_state_fits(state: dict[str, torch.Tensor], model: nn.Module, path: Path, model_name: str) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(k for k in want if k not in state or tuple(state[k].shape) != want[k])
    if wrong:
        raise ConfigError(
            f"the mask's init file '{path}' does not fit model '{model_name}' "
            f"(missing or misshaped: {', '.join(wrong[:3])}); point the mask's sidecar at its init "
            "or use --init-from fresh"
        )


def train_mask(
    mask_path: Path,
    hp: RunHparams,
    *,
    seed: int = 0,
    init: str = "source",
    opts: RunOptions | None = None,
    adapt: Adapt | None = None,
    untrained: bool = False,
    record: dict[str, Any] | None = None,
) -> RunSummary:
    """Train a given ticket: the mask's own init (``source``) or a fresh one from ``seed`` (``fresh``).

    The run's identity holds the mask's content and the init it trains from (the init file's content for
    ``source``, the derived seed for ``fresh``): two different tickets never share a cached result.

    For transfer (``ticketsearch.transfer``): ``adapt`` fits the mask and its init to the target model
    (a new output layer for another class count); ``untrained`` evaluates the masked weights as they are
    (a supermask's frozen weights) and trains them only with ``opts.then_train``; ``record`` (the source's
    metadata and result) is stored in the run directory as ``source.json`` and in every result.
    """
    opts = opts or RunOptions()
    world = opts.world

    def build() -> tuple[Mask, RunHparams, Run, dict[str, torch.Tensor] | None, dict[str, Any], Path | None]:
        if init not in ("source", "fresh"):
            raise ConfigError(f"unknown init '{init}' (choose from: source, fresh)")
        hp.validate()
        check_seed(seed)
        world.check_batch_size(hp.training.batch_size)
        mask = Mask.load(mask_path)
        init_seed = (seed + _FRESH_INIT_SEED_OFFSET) % (2**63) if init == "fresh" else None
        source_init = ticket_init(mask_path, mask) if init == "source" else None
        identity = {
            "mask": mask_digest(mask),
            "init": init,
            "init_digest": file_digest(source_init) if source_init is not None else None,
            "init_seed": init_seed,
            "untrained": untrained,
            "then_train": bool(untrained and opts.then_train),
        }
        run_hp = hp.replace(
            method_args=tuple(sorted({**dict(hp.method_args), "ticket": stable_hash(identity)}.items()))
        )
        run = Run(run_hp, seed, opts, init_seed=init_seed)
        state = load_state(source_init, run.device) if source_init is not None else None
        notes: dict[str, Any] = {}
        if adapt is not None:
            mask, state, notes = adapt(mask, run, state)
        mask.check_shapes(run.shapes, what=f"model '{run_hp.model.model}' on '{run_hp.dataset.dataset}'")
        if state is not None:
            assert source_init is not None
            _check_state_fits(state, run.model, source_init, run_hp.model.model)
        return mask, run_hp, run, state, notes, source_init

    # torchrun: every rank reads the (input) mask and init; a rank that cannot stops every rank
    mask, hp, run, state, notes, _ = world.agree(build)
    mask = run.shared_mask(mask)
    extra = {**notes, **({"source": record} if record is not None else {})}
    with opened(run):
        if record is not None:
            from ..core.io import atomic_write_json

            world.on_main("source.json", lambda: atomic_write_json(run.run.path / "source.json", record))
        level = run.level(1)
        start = state if state is not None else run.init_state
        if level.done():
            res = level.result()
        else:
            reset_to(run.model, start, mask)
            run.save_state(level.path / "init.safetensors", start)  # the init this ticket starts from
            meta = run.mask_metadata(
                level=1, source_mask=str(mask_path), init_mode=init, init="init.safetensors"
            )
            level.save_mask(get_mask(run.model), **meta)
            if untrained:
                from ..training import evaluate

                ev = evaluate(run.model, run.data.x_test, run.data.y_test, world=world)
                res = {"test_acc": ev["acc"], "test_loss": ev["loss"], "weights_trained": False, **extra}
                run.save_state(level.final_path, run.model.state_dict())
                level.write_result(res)
            else:
                result = run.train_level(level, run.model, desc="train ticket")
                res = run.finish_level(level, run.model, result, density=mask.density, **extra)
        row = LevelRow(1, mask.density, str(level.mask_path), res)
        if untrained and opts.then_train:
            row.then_train = run.then_train_level(level, start, mask, run.then_train_hp)
    return RunSummary(run.run.path, seed, [row])
