"""User-facing errors.

Every error a user can cause by bad input derives from :class:`TicketsearchError`. The CLI catches exactly
this class, prints its message on one line and exits with code 2; anything else is a bug and keeps its
traceback. Messages name the bad value and what is allowed.
"""

from __future__ import annotations

__all__ = [
    "TicketsearchError",
    "ConfigError",
    "EmptyLayerError",
    "UnknownNameError",
    "MaskMismatchError",
    "DataError",
    "DivergenceError",
    "StorageError",
    "RunLockedError",
]


class TicketsearchError(Exception):
    """Base class of errors caused by the user's input or environment (exit code 2 in the CLI)."""


class ConfigError(TicketsearchError, ValueError):
    """A hyperparameter or flag has a value outside what is allowed."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup of a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EmptyLayerError(ConfigError):
    """A mask keeps no weight of some layer: the network is disconnected (a bad density for this method)."""


class MaskMismatchError(TicketsearchError, ValueError):
    """A mask does not fit a model (names or shapes differ)."""


class DataError(TicketsearchError, OSError):
    """A data file is missing, truncated or corrupt."""


class DivergenceError(TicketsearchError, FloatingPointError):
    """Training produced a NaN or infinite loss (or scores)."""


class StorageError(TicketsearchError, OSError):
    """A result could not be written: full disk, quota, read-only file system, a folder taken by a file.

    An ``OSError`` so code that already tolerates failed writes (a read-only data cache) keeps doing so;
    ``errno`` is the original error number where there was one.
    """


class RunLockedError(TicketsearchError):
    """Another process is working on the same replicate; two writers would corrupt its checkpoints."""
