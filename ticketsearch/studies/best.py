"""``find --from-study``: the best trial's hparams as the defaults of ``find``'s flags.

Every trial stores the hparams it ran with; the best one's fill each flag ``find`` was not given, so
``find --from-study URL`` alone names the best trial's own run directory (nothing is retrained), and
``find --from-study URL --budget 50ep`` trains the best values longer. For a ``--pareto`` study the trial
is the Pareto-optimal one nearest ``--density`` (on a log scale).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..core.errors import ConfigError
from ..core.hparams import RunHparams, TrainingHparams

__all__ = ["choose_trial", "fill_from_study"]


def choose_trial(study: Any, density: float | None = None) -> Any:
    """The best complete trial; for a multi-objective study, the Pareto-optimal one nearest ``density``."""
    from optuna.trial import TrialState

    from .report import best_trials

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfigError(f"study '{study.study_name}' has no complete trial yet")
    front = best_trials(study)
    if len(study.directions) == 1:
        return front[0]
    if density is None:
        found = ", ".join(f"{t.values[1]:.4g}" for t in front)
        raise ConfigError(
            f"study '{study.study_name}' is a Pareto study: give --density to take the Pareto-optimal "
            f"trial nearest it (densities on the front: {found})"
        )
    return min(front, key=lambda t: (abs(math.log(t.values[1]) - math.log(density)), t.number))


def fill_from_study(ns: argparse.Namespace) -> str:
    """Fill ``find``'s flags that were not given from the chosen trial; returns a line saying which."""
    import dataclasses

    from ..methods import SHARED_FIELDS, get_method
    from .study import load_study

    density = (
        ns.density if ns.density is not None else (1.0 - ns.sparsity if ns.sparsity is not None else None)
    )
    study = load_study(ns.from_study, ns.study_name)
    trial = choose_trial(study, density)
    stored = trial.user_attrs.get("hparams")
    if not isinstance(stored, dict):
        raise ConfigError(
            f"trial {trial.number} of study '{study.study_name}' stores no hparams (not a ticketsearch study)"
        )
    hp = RunHparams.from_dict(stored)
    method = hp.pruning.method
    if ns.method is not None and ns.method != method:
        raise ConfigError(
            f"--method {ns.method} differs from study '{study.study_name}', which tuned '{method}'; drop --method"
        )
    ns.method = method
    for flag, value, unset in (
        ("dataset", hp.dataset.dataset, None),
        ("model", hp.model.model, None),
        ("init", hp.model.init, None),
        ("val_size", hp.dataset.val_size, -1.0),
        ("resize", hp.dataset.resize, 0),
    ):
        if getattr(ns, flag, None) is None and value != unset:
            setattr(ns, flag, value)
    for f in dataclasses.fields(TrainingHparams):
        if getattr(ns, f.name, None) is None:
            setattr(ns, f.name, getattr(hp.training, f.name))
    strategy = get_method(method)
    reads = (set(SHARED_FIELDS) | set(strategy.fields)) - {"method"}
    for name in sorted(reads):
        value = getattr(hp.pruning, name)
        if name == "density":
            if density is None:
                ns.density = value
        elif getattr(ns, name, None) is None:
            setattr(ns, name, value)
    own = strategy.own(hp)
    if own is not None:  # the method's own hyperparameters, each under its flag's name
        from ..methods import own_hparams

        flags = own_hparams()
        for name in strategy.own_fields():
            dest = flags[name].dest if name in flags else name
            if getattr(ns, dest, None) is None:
                setattr(ns, dest, getattr(own, name))
    given = {a.split("=", 1)[0].strip() for a in ns.arg}
    ns.arg = [f"{k}={json.dumps(v)}" for k, v in hp.method_args if k not in given] + list(ns.arg)
    from .report import params_text

    return f"from study '{study.study_name}': trial {trial.number} (val_acc {trial.values[0]:.4f}): {params_text(trial)}"
