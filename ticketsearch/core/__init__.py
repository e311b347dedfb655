"""Pure data and rules: Mask, selection, hparams, registries, errors. No nn.Module code here."""

from .errors import (
    ConfigError,
    DataError,
    DivergenceError,
    MaskMismatchError,
    TicketsearchError,
    UnknownNameError,
)
from .mask import Mask
from .pattern import Pattern, check_pattern, parse_pattern
from .registry import Registry
from .select import check_density, layer_densities, select, select_counts, select_global, validate_scores

__all__ = [
    "ConfigError",
    "DataError",
    "DivergenceError",
    "Mask",
    "MaskMismatchError",
    "Pattern",
    "Registry",
    "TicketsearchError",
    "UnknownNameError",
    "check_density",
    "check_pattern",
    "layer_densities",
    "parse_pattern",
    "select",
    "select_counts",
    "select_global",
    "validate_scores",
]
