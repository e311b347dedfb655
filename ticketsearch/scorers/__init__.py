"""Ticket-finding methods: scorers (higher score = keep) and the registry that names them.

Built-ins: ``magnitude``, ``random``, ``snip``, ``grasp``, ``synflow`` (one-shot or iterative scorers),
``imp`` (run by ``training.imp``) and learned supermasks. Third-party scorers are found through the
entry-point group ``ticketsearch.scorers`` the first time the registry is listed or a name is missing.

>>> from ticketsearch.scorers import METHODS, find_mask
>>> scorer = METHODS.get("snip")()
"""

from __future__ import annotations

import importlib as _importlib

from . import grasp, imp, magnitude, random_, snip, synflow  # noqa: F401  (registers the built-ins)
from .base import (
    METHODS,
    Batch,
    MethodRegistry,
    Scorer,
    ScoringContext,
    cost_counter,
    loss_gradients,
    method_arg,
    note_cost,
    register_method,
    require_batches,
    scoring_copy,
)
from .grasp import GraSP, hessian_gradient_product
from .iterative import density_schedule, empty_layers, find_mask, first_collapse_density
from .magnitude import Magnitude
from .random_ import RandomScorer
from .snip import SNIP
from .synflow import SynFlow

# --- learned supermasks: owned by scorers/supermask*.py; add their imports in this block only ---------------
try:
    _importlib.import_module(f"{__name__}.supermask")  # registers the learned methods
except ModuleNotFoundError as _exc:  # only while scorers/supermask.py does not exist yet
    if _exc.name != f"{__name__}.supermask":
        raise
# --- end of supermask block --------------------------------------------------------------------------------

__all__ = [
    "METHODS",
    "MethodRegistry",
    "Batch",
    "Scorer",
    "ScoringContext",
    "register_method",
    "method_arg",
    "require_batches",
    "scoring_copy",
    "loss_gradients",
    "note_cost",
    "cost_counter",
    "find_mask",
    "first_collapse_density",
    "density_schedule",
    "empty_layers",
    "hessian_gradient_product",
    "Magnitude",
    "RandomScorer",
    "SNIP",
    "GraSP",
    "SynFlow",
]
