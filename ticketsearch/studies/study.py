"""One Optuna study of one method: the objective, the worker loop, and the recovery of dead workers.

Each trial draws its values from the method's own :meth:`~ticketsearch.methods.Method.search_space`, runs
through :func:`~ticketsearch.experiments.runner.run_find` (an ordinary, resumable run directory, whose
path is the trial's ``run_dir`` user attribute) and returns the validation accuracy of the ticket — for
IMP, of the level nearest the requested density — or, with ``pareto``, (accuracy, density) for NSGA-II.
Validation accuracy at every evaluation is reported as the trial's intermediate value, so a pruner can
stop a trial (``optuna.TrialPruned`` leaves the run directory at its last checkpoint).

``n_trials`` is the study's target, not a count per process: every worker runs trials until the study
holds ``n_trials`` finished (complete or pruned) ones, so rerunning a command resumes it and several
workers share it. Workers starting their last trials at the same moment can finish a few more. A worker
whose trials are all finished or running elsewhere waits for them, because one whose worker died comes
back as a retry (heartbeat; on SQLite also at once when its process is gone from this machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from ..core.errors import ConfigError, DivergenceError, TicketsearchError
from ..core.hparams import RunHparams, stable_hash, to_iterations
from ..core.provenance import collect_stale
from .storage import DatabaseLost, _say

if TYPE_CHECKING:
    from ..experiments.runner import RunOptions
    from ..methods import LevelRow, Method

__all__ = [
    "StudySpec",
    "StudyOutcome",
    "PRUNERS",
    "validate_spec",
    "run_study",
    "load_study",
    "pick_row",
    "worker_id",
]

PRUNERS = ("median", "hyperband", "none")
_MAX_FAILURES_IN_A_ROW = 3


@dataclass(frozen=True)
class StudySpec:
    """What a study optimises. Workers of one study must agree on it: it is stored with the study, and a
    command that differs is refused (``hp``: the base hparams, recipe and flags, before the search)."""

    hp: RunHparams
    n_trials: int = 20
    seed: int = 0
    pareto: bool = False
    density_range: tuple[float, float] = (0.01, 0.9)
    pinned: dict[str, Any] = field(default_factory=dict)  # parameter → the value a flag fixed it to
    pruner: str = "median"
    heartbeat: int = 60
    db_wait: float = 300.0  # seconds a storage call waits for a lost database (0: not at all)

    @property
    def method(self) -> str:
        return self.hp.pruning.method

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        return ["maximize", "minimize"] if self.pareto else ["maximize"]

    @property
    def objective_names(self) -> list[str]:
        return ["val_acc", "density"] if self.pareto else ["val_acc"]

    def identity(self) -> dict[str, Any]:
        """What makes two commands the same study (not n_trials, pruner, heartbeat or db_wait: those may
        differ between workers and reruns)."""
        return {
            "method": self.method,
            "hparams": self.hp.to_dict(),
            "seed": self.seed,
            "objective": "pareto" if self.pareto else "val_acc",
            "density_range": list(self.density_range) if self.pareto else None,
            "pinned": sorted(self.pinned),
        }

    def default_name(self) -> str:
        """The study a command resumes when no ``--study-name`` is given: one per identity."""
        return f"{self.method}_{self.hp.dataset.dataset}_{stable_hash(self.identity(), 10)}"


@dataclass
class StudyOutcome:
    name: str
    storage: str  # printable (no password)
    spec: StudySpec
    ran: list[int] = field(default_factory=list)  # numbers of the trials this process finished
    study: Any = None  # the optuna.Study

    def to_dict(self) -> dict[str, Any]:
        from .report import best_trials, trial_record

        best = best_trials(self.study, pareto=self.spec.pareto) if self.study is not None else []
        return {
            "study": self.name,
            "storage": self.storage,
            "method": self.spec.method,
            "n_trials": self.spec.n_trials,
            "ran": self.ran,
            "best": [trial_record(t) for t in best],
        }


# -- the trial ------------------------------------------------------------------------------------------------
class _Pinned:
    """A trial whose parameters named in ``pinned`` come back as the flag gave them, unrecorded: a flag
    given to ``study`` fixes that value instead of searching it."""

    def __init__(self, trial: Any, pinned: dict[str, Any]) -> None:
        self._trial, self._pinned = trial, pinned

    def _get(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self._pinned:
            return self._pinned[name]
        return getattr(self._trial, kind)(name, *args, **kwargs)

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._get("suggest_float", name, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._get("suggest_int", name, *args, **kwargs)

    def suggest_categorical(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._get("suggest_categorical", name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


def trial_hparams(method: Method, trial: Any, spec: StudySpec) -> RunHparams:
    """The hparams of one trial: the method's space drawn from ``trial``, pinned values kept."""
    pinned = cast(Any, _Pinned(trial, spec.pinned))  # a Trial to the method
    return method.search_space(pinned, spec.hp, density=spec.density_range if spec.pareto else None)


def pick_row(rows: list[LevelRow], density: float) -> LevelRow:
    """The level a trial is judged by: the ticket at ``density`` by the one rule every package uses
    (:func:`~ticketsearch.methods.nearest_ticket`, which :meth:`Method.ticket_for` applies): IMP's level
    nearest ``density`` on a log scale; one-shot and learned methods' one ticket level."""
    from ..methods import nearest_ticket

    return nearest_ticket(rows, density)


class _Reporter:
    """``RunOptions.on_eval`` of a single-objective trial: validation accuracy → ``trial.report``.

    The step counts evaluations across the trial's levels (``level_k`` owns steps ``k·(E+1) + i`` for
    its evaluations i = 1..E), so a resumed level reports the same steps as an uninterrupted one and
    trials compare at equal work. The pruner is asked only once a level has done a quarter of its
    training: after one epoch of thirty, a slow starter under a cosine schedule is not yet a bad trial."""

    def __init__(self, trial: Any, hp: RunHparams) -> None:
        self.trial, self.training = trial, hp.training

    def __call__(self, level: Path, record: dict[str, Any]) -> None:
        m = re.fullmatch(r"level_(\d+)", level.name)
        it, acc = int(record.get("iteration") or 0), record.get("val_acc")
        if m is None or it <= 0 or acc is None or not record.get("epoch"):
            return
        spe = max(1, round(it / float(record["epoch"])))
        total = to_iterations(self.training.budget, spe, name="budget")
        every = to_iterations(self.training.eval_every, spe, name="eval_every") or total
        evals, index = -(-total // every), -(-it // every)
        self.trial.report(float(acc), int(m.group(1)) * (evals + 1) + index)
        if 4 * index >= evals and self.trial.should_prune():  # not in a level's first quarter: too noisy
            import optuna

            raise optuna.TrialPruned(f"val_acc {float(acc):.4f} at {level.name}, iteration {it}")


class _Objective:
    def __init__(self, spec: StudySpec, method: Method, opts: RunOptions) -> None:
        self.spec, self.method, self.opts = spec, method, opts
        self.current: int | None = None

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        from ..experiments.rundir import RunDir
        from ..experiments.runner import prepare, run_find

        self.current = trial.number
        trial.set_user_attr("worker", worker_id())
        try:
            hp = trial_hparams(self.method, trial, self.spec)
            method, canonical = prepare(hp, self.opts)
            run_dir = RunDir(self.opts.root, canonical, identity=method.identity(canonical)).path
            trial.set_user_attr("run_dir", str(Path(run_dir).resolve()))  # any cwd, any worker
            trial.set_user_attr("hparams", hp.to_dict())
            on_eval = None if self.spec.pareto else _Reporter(trial, canonical)
            try:
                with collect_stale() as reused:  # cached levels other code made: named on the trial
                    summary = run_find(
                        hp, seed=self.spec.seed, opts=dataclasses.replace(self.opts, on_eval=on_eval)
                    )
                if reused:
                    trial.set_user_attr("stale", [{"path": e["path"], "reason": e["reason"]} for e in reused])
            except DivergenceError as exc:  # a result of the values tried: the worst accuracy, so the
                trial.set_user_attr("diverged", str(exc))  # sampler learns to avoid them
                return (0.0, float(hp.pruning.density)) if self.spec.pareto else 0.0
            row = method.ticket_for(summary.rows, hp.pruning.density)
            acc = row.result.get("val_acc")
            if acc is None or not math.isfinite(float(acc)):
                raise ConfigError(
                    f"run '{summary.run_dir}' recorded no validation accuracy; a study needs a "
                    "validation split (--val-size > 0)"
                )
            for key, value in (
                ("level", row.level),
                ("density", row.density),
                ("test_acc", row.result.get("test_acc")),
                ("mask", row.mask),
            ):
                trial.set_user_attr(key, value)
        except DatabaseLost:
            raise
        except TicketsearchError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        return (float(acc), float(row.density)) if self.spec.pareto else float(acc)


# -- workers -----------------------------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process from /proc, or None where there is no /proc."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def worker_id() -> dict[str, Any]:
    """This process, as stored on its trials: host (and boot), pid, the pid's start time, and when."""
    me = _proc_start(os.getpid())
    return {
        "host": socket.gethostname(),
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pid": os.getpid(),
        "start": me[1] if me else None,
        "since": time.time(),
    }


def _gone(worker: dict[str, Any]) -> bool:
    """True when ``worker`` ran on this machine (same host and boot) and its process no longer exists."""
    me = worker_id()
    if worker.get("host") != me["host"] or worker.get("boot") != me["boot"]:
        return False
    pid = int(worker.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    proc = _proc_start(pid)
    if proc is None:
        return False
    state, start = proc
    return state == "Z" or (worker.get("start") is not None and start != worker.get("start"))


def _fail_and_retry(study: Any, storage: Any, numbers: list[int]) -> list[int]:
    """Mark these RUNNING trials failed and enqueue each again (same parameters, so the same run
    directory resumes); a trial another process already finished or failed is left alone."""
    import optuna
    from optuna.trial import TrialState

    from .storage import retry_callback

    done = []
    sid = storage.get_study_id_from_name(study.study_name)
    for number in numbers:
        tid = storage.get_trial_id_from_study_id_trial_number(sid, number)
        try:
            if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry_callback()(study, storage.get_trial(tid))
        done.append(number)
    return done


def _recover(study: Any, storage: Any, local: bool) -> None:
    """Trials of dead workers become failed and are enqueued again: stale heartbeats (any machine; none
    while the database has just come back, see ``PatientStorage.stale_trial_ids``), and on a local
    database also trials whose process is gone from this machine (no wait)."""
    from optuna.trial import TrialState

    sid = storage.get_study_id_from_name(study.study_name)
    stale = [storage.get_trial(tid).number for tid in storage.stale_trial_ids(sid)]
    _fail_and_retry(study, storage, stale)
    if not local:
        return
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        # a retried trial carries its dead worker's note until its new worker writes its own
        if (
            isinstance(w, dict)
            and t.datetime_start is not None
            and t.datetime_start.timestamp() <= w.get("since", 0)
        ):
            if _gone(w):
                dead.append(t.number)
    for number in _fail_and_retry(study, storage, dead):
        _say(f"trial {number} of a dead worker on this machine: failed, enqueued again")


def _counts(study: Any) -> dict[str, int]:

    out = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    out["finished"] = out["COMPLETE"] + out["PRUNED"]
    return out


def _sampler_and_pruner(spec: StudySpec) -> tuple[Any, Any]:
    import optuna

    if spec.pareto:
        # a generation of n/5 (4 to 50), so a 20-trial study sees a few generations, not one random one
        population = max(4, min(50, spec.n_trials // 5))
        return optuna.samplers.NSGAIISampler(population_size=population), optuna.pruners.NopPruner()
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[spec.pruner]()
    return optuna.samplers.TPESampler(), pruner


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} → {b!r}"]


def _open_study(storage: Any, name: str, spec: StudySpec, shown: str) -> Any:
    """Create the study, or load it after checking it is the same one (directions, then settings)."""
    import optuna

    try:
        sid = storage.get_study_id_from_name(name)
    except KeyError:
        sid = None
    stored_attrs = None
    if sid is not None:
        stored = [d.name.lower() for d in storage.get_study_directions(sid)]
        if stored != spec.directions:
            what = {1: "accuracy alone", 2: "accuracy and density (--pareto)"}
            raise ConfigError(
                f"study '{name}' in '{shown}' optimises {what.get(len(stored), stored)} "
                f"({', '.join(stored)}), but this command asks for {what[len(spec.directions)]}; "
                "use another --study-name"
            )
        stored_attrs = storage.get_study_user_attrs(sid).get("ticketsearch")
        if isinstance(stored_attrs, dict) and stored_attrs.get("identity") is not None:
            diff = _differences(stored_attrs["identity"], spec.identity())
            if diff:
                raise ConfigError(
                    f"study '{name}' in '{shown}' was made with other settings "
                    f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}); rerun it with them "
                    "or use another --study-name"
                )
    sampler, pruner = _sampler_and_pruner(spec)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=spec.directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if not stored_attrs:
        from .. import __version__

        study.set_user_attr(
            "ticketsearch",
            {"identity": spec.identity(), "objectives": spec.objective_names, "version": __version__},
        )
    return study


def validate_spec(spec: StudySpec, opts: RunOptions) -> Method:
    """Everything checked before a database or a folder is touched: the numbers, the method's search
    space (a dry draw), the hparams of a trial, the data and the model."""
    import optuna

    from ..experiments.runner import Run, prepare
    from ..methods import get_method
    from .storage import check_db_wait, quiet

    if isinstance(spec.n_trials, bool) or not isinstance(spec.n_trials, int) or spec.n_trials < 1:
        raise ConfigError(f"--n-trials must be a whole number ≥ 1, got {spec.n_trials!r}")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner '{spec.pruner}' (choose from: {', '.join(PRUNERS)})")
    if spec.pareto and spec.pruner != "none":
        raise ConfigError(
            f"--pruner {spec.pruner} does not apply to --pareto (Optuna prunes single-objective trials "
            "only); drop it"
        )
    if isinstance(spec.heartbeat, bool) or not isinstance(spec.heartbeat, int) or spec.heartbeat < 1:
        raise ConfigError(f"--heartbeat must be a whole number of seconds ≥ 1, got {spec.heartbeat!r}")
    check_db_wait(spec.db_wait)
    lo, hi = spec.density_range
    if not (0 < lo < hi <= 1):
        raise ConfigError(f"--density-range must be LOW,HIGH with 0 < LOW < HIGH ≤ 1, got {lo},{hi}")
    if spec.hp.dataset.val_size == 0:
        raise ConfigError("a study maximises validation accuracy: --val-size must be > 0")
    method = get_method(spec.method)
    quiet()
    dry = optuna.create_study(directions=spec.directions).ask()  # in memory: nothing is written
    hp = trial_hparams(method, dry, spec)
    prepared, canonical = prepare(hp, opts)
    Run(canonical, spec.seed, opts, method=prepared)  # loads the data and builds the model, writes nothing
    return method


def _prepare_storage(url: str | None, root: Path) -> str:
    from ..core.io import expand_path
    from ..experiments.rundir import check_writable
    from .storage import default_url

    if url is not None:
        return url
    root = expand_path(root, what="results root")
    check_writable(root)
    root.mkdir(parents=True, exist_ok=True)
    return default_url(root)


def load_study(url: str, name: str | None, *, what: str = "--study-name", db_wait: float = 300.0) -> Any:
    """An existing study (``name`` may be omitted when the storage holds exactly one)."""
    import optuna

    from .storage import check_url, open_storage, safe_url

    parsed = check_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).expanduser().is_file():  # opening it would create an empty one
            raise ConfigError(f"no study database at '{parsed.database}' (storage '{safe_url(url)}')")
    storage = open_storage(url, heartbeat=None, db_wait=db_wait)
    names = sorted(s.study_name for s in storage.get_all_studies())
    shown = safe_url(url)
    if name is None:
        if len(names) != 1:
            listed = ", ".join(names[:10]) or "none"
            raise ConfigError(
                f"storage '{shown}' holds {len(names)} studies ({listed}); choose one with {what}"
            )
        name = names[0]
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"no study '{name}' in storage '{shown}'{hint} (studies: {', '.join(names[:10]) or 'none'})"
        )
    return optuna.load_study(study_name=name, storage=storage)


def run_study(
    spec: StudySpec,
    opts: RunOptions,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    progress: bool | str = "auto",
    on_trial: Callable[[Any], None] | None = None,
) -> StudyOutcome:
    """Run trials until the study holds ``spec.n_trials`` finished ones; returns what this process did.

    ``storage``: an SQLAlchemy URL (default ``sqlite:///<opts.root>/studies.db``); ``study_name``:
    default :meth:`StudySpec.default_name`. Everything is validated before the storage is opened.
    """
    from .storage import open_storage, safe_url

    method = validate_spec(spec, opts)
    url = _prepare_storage(storage, opts.root)
    shown = safe_url(url)
    rdb = open_storage(url, heartbeat=spec.heartbeat, db_wait=spec.db_wait)
    name = study_name or spec.default_name()
    study = _open_study(rdb, name, spec, shown)
    local = rdb.engine.url.get_backend_name() == "sqlite"
    trial_opts = dataclasses.replace(opts, progress=False)
    objective = _Objective(spec, method, trial_opts)
    outcome = StudyOutcome(name=name, storage=shown, spec=spec, study=study)
    bar = _bar(spec.n_trials, name, progress)
    failures = 0
    waiting = False
    try:
        while True:
            _recover(study, rdb, local)
            counts = _counts(study)
            if bar is not None:
                bar.n = min(counts["finished"], spec.n_trials)
                bar.refresh()
            if counts["finished"] >= spec.n_trials:
                break
            if counts["WAITING"] == 0 and counts["finished"] + counts["RUNNING"] >= spec.n_trials:
                if not waiting:  # the last trials run elsewhere; one whose worker dies comes back here
                    _say(
                        f"waiting for {counts['RUNNING']} trial(s) running in other processes (a dead "
                        f"worker's trial is retried here after {2 * spec.heartbeat} s without a heartbeat)"
                    )
                    waiting = True
                time.sleep(min(1.0, spec.heartbeat / 2))
                continue
            waiting = False
            objective.current = None
            _one_trial(study, rdb, objective, spec.heartbeat)
            if objective.current is None:
                continue
            t = _trial(study, objective.current)
            outcome.ran.append(t.number)
            _say(_trial_line(t, spec))
            if on_trial is not None:
                on_trial(t)
            if t.state.name == "FAIL":
                failures += 1
                if failures >= _MAX_FAILURES_IN_A_ROW:
                    raise ConfigError(
                        f"{failures} trials in a row failed; the last: {t.user_attrs.get('error', '?')}"
                    )
            else:
                failures = 0
    finally:
        if bar is not None:
            bar.close()
    return outcome


def _one_trial(study: Any, storage: Any, objective: _Objective, heartbeat: int) -> None:
    """Ask for a trial, run the objective under this worker's :class:`~.storage.Heartbeat`, tell the
    result — what ``Study.optimize`` does for one trial, with a heartbeat that survives a database outage
    and without a second wait for a database this process already gave up on. A :class:`TicketsearchError`
    fails the trial (its message is the trial's ``error``); a pruned trial is PRUNED; Ctrl-C fails it and
    enqueues it again for the rerun; a lost database stops the command and leaves the trial RUNNING, for
    the next worker to retry once its heartbeat is stale."""
    import optuna
    from optuna.trial import TrialState

    from .storage import Heartbeat

    trial = study.ask()
    values: Any = None
    state = None
    with Heartbeat(storage, trial._trial_id, heartbeat):
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except DatabaseLost:
            raise
        except TicketsearchError:
            state = TrialState.FAIL
        except KeyboardInterrupt:
            with contextlib.suppress(DatabaseLost), storage.no_wait():  # on the way out: no wait
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                _requeue(study, storage, trial.number)
            raise
        except Exception:  # a bug: the trial fails with it, the traceback is kept
            with contextlib.suppress(DatabaseLost), storage.no_wait():
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
    study.tell(trial, values, state=state, skip_if_finished=True)


def _requeue(study: Any, storage: Any, number: int) -> None:
    from optuna.trial import TrialState

    from .storage import retry_callback

    t = _trial(study, number)
    if t.state == TrialState.FAIL and "error" not in t.user_attrs:
        retry_callback()(study, t)


def _trial(study: Any, number: int) -> Any:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise KeyError(number)  # pragma: no cover  (trials are never deleted)


def _trial_line(t: Any, spec: StudySpec) -> str:
    from .report import params_text

    state = t.state.name.lower()
    if state == "fail":
        return f"trial {t.number} failed: {t.user_attrs.get('error', 'no result')}"
    head = f"trial {t.number} {state}"
    if t.values:
        head += f": val_acc {t.values[0]:.4f}"
        if t.user_attrs.get("density") is not None:
            head += f" at density {t.user_attrs['density']:.4f}"
    elif t.intermediate_values:
        step = max(t.intermediate_values)
        head += f" at step {step} (val_acc {t.intermediate_values[step]:.4f})"
    if t.user_attrs.get("diverged"):
        head += " (diverged)"
    return f"{head}  [{params_text(t)}]"


def _bar(total: int, name: str, progress: bool | str) -> Any:
    from ..training import progress_bar

    return progress_bar(total, enabled=progress, desc=f"study {name}", unit="trial", leave=True)
