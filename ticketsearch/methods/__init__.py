"""Ticket-finding methods as strategies: one-shot scorers, IMP, learned supermasks.

A method is a :class:`Method` with its own fields, knobs and ``run_levels(run)``; the runner in
:mod:`ticketsearch.experiments` gives it storage and resume. Every registered scorer is a method too
(:class:`OneShot`). A new method is one module with ``@register_strategy("name")`` plus its import here;
third-party strategies register through the entry-point group ``ticketsearch.methods``.

>>> from ticketsearch.methods import get_method
>>> get_method("snip").default_scope
'global'
"""

from __future__ import annotations

from . import cs, dst, early_bird, gmp, imp, learned  # noqa: F401  (registers the built-in strategies)
from .base import (
    METHOD_STRATEGIES,
    SHARED_FIELDS,
    LevelRow,
    LevelStore,
    Method,
    MethodInfo,
    OwnHparam,
    RunContext,
    SmallestSearch,
    dense_hparams,
    get_method,
    list_methods,
    method_names,
    nearest_level,
    nearest_ticket,
    own_hparams,
    register_strategy,
    steps_per_epoch,
)
from .cs import ContinuousSparsification, CSHparams
from .dst import SET, DropGrow, RigL
from .early_bird import EarlyBird, EarlyBirdDetector, EarlyBirdHparams
from .gmp import GMP, GMPSchedule
from .imp import IMP, IMPHparams
from .learned import BernoulliSupermask, EdgePopup, Learned, learned_recipe, run_learned
from .moving import MovingMask
from .oneshot import OneShot

__all__ = [
    "METHOD_STRATEGIES",
    "SHARED_FIELDS",
    "LevelRow",
    "LevelStore",
    "Method",
    "MethodInfo",
    "RunContext",
    "get_method",
    "list_methods",
    "method_names",
    "register_strategy",
    "nearest_level",
    "nearest_ticket",
    "dense_hparams",
    "SmallestSearch",
    "OwnHparam",
    "own_hparams",
    "steps_per_epoch",
    "IMP",
    "EarlyBird",
    "EarlyBirdDetector",
    "EarlyBirdHparams",
    "IMPHparams",
    "GMP",
    "MovingMask",
    "RigL",
    "SET",
    "ContinuousSparsification",
    "CSHparams",
    "DropGrow",
    "GMPSchedule",
    "Learned",
    "EdgePopup",
    "BernoulliSupermask",
    "OneShot",
    "learned_recipe",
    "run_learned",
]
