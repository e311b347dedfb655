"""ticketsearch: find winning lottery tickets (IMP, saliency scorers, learned supermasks).

Importing the package is cheap: subpackages are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Mask": ("ticketsearch.core.mask", "Mask"),
    "select": ("ticketsearch.core.select", "select"),
    "load_ticket": ("ticketsearch.export", "load_ticket"),
}
# every subpackage, imported on first access (``ticketsearch.bench``); the capability packages too
_SUBPACKAGES = (
    "core",
    "sparse",
    "models",
    "data",
    "scorers",
    "training",
    "methods",
    "experiments",
    "transfer",
    "bench",
    "smallest",
    "studies",
    "export",
    "commands",
    "testing",
)

__all__ = ["__version__", *_LAZY, *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"ticketsearch.{name}")
    raise AttributeError(f"module 'ticketsearch' has no attribute {name!r}")
