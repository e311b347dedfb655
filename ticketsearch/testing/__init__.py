"""Test helpers for people extending ticketsearch (importing this imports pytest; the package never does).

>>> from ticketsearch.testing import ScorerConformance
>>> class TestMyScorer(ScorerConformance):
...     scorer_name = "my_scorer"
"""

from __future__ import annotations

from .conformance import ScorerConformance, conformance_models, make_batches

__all__ = ["ScorerConformance", "conformance_models", "make_batches"]
