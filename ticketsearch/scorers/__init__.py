"""One-shot scorers (higher score = keep) and the registry that names them; ``core.select`` makes masks.

Built-ins: ``magnitude``, ``random``, ``snip``, ``grasp``, ``synflow``, ``prospr``, ``force`` (one-shot or
iterative scorers).
Third-party scorers are found through the entry-point group ``ticketsearch.scorers`` the first time the
registry is listed or a name is missing. Methods that train (IMP, learned supermasks) are strategies in
:mod:`ticketsearch.methods`, where every scorer also becomes a method.

>>> from ticketsearch.scorers import SCORERS, find_mask
>>> scorer = SCORERS.get("snip")()
"""

from __future__ import annotations

from . import force, grasp, magnitude, prospr, random_, snip, synflow  # noqa: F401  (registers the built-ins)
from .base import (
    SCORERS,
    Batch,
    Scorer,
    ScorerRegistry,
    ScoringContext,
    cost_counter,
    loss_gradients,
    method_arg,
    note_cost,
    register_scorer,
    require_batches,
    scoring_copy,
)
from .force import FORCE, force_saliency
from .grasp import GraSP, hessian_gradient_product
from .iterative import density_schedule, empty_layers, find_mask, first_collapse_density
from .magnitude import Magnitude
from .prospr import ProsPr, meta_gradients
from .random_ import RandomScorer
from .snip import SNIP
from .synflow import SynFlow

__all__ = [
    "SCORERS",
    "ScorerRegistry",
    "Batch",
    "Scorer",
    "ScoringContext",
    "register_scorer",
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
    "ProsPr",
    "meta_gradients",
    "FORCE",
    "force_saliency",
]
