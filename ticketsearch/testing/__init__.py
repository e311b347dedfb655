"""Test helpers for people extending ticketsearch (importing this imports pytest; the package never does).

>>> from ticketsearch.testing import MethodConformance, ScorerConformance
>>> class TestMyScorer(ScorerConformance):
...     scorer_name = "my_scorer"
>>> class TestMyMethod(MethodConformance):   # a whole strategy, end to end on digits
...     method_name = "my-method"
"""

from __future__ import annotations

from .conformance import ScorerConformance, conformance_models, make_batches
from .method_conformance import MethodConformance

__all__ = ["ScorerConformance", "MethodConformance", "conformance_models", "make_batches"]
