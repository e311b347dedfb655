"""Building one of our C++ CPU kernels (``csrc/*.cpp``) on first use, shared by every compiled kernel.

Why one place: how a kernel is built must not differ between kernels — ``TICKETSEARCH_NO_EXT=1`` disables
all of them, a build folder is named after the source's hash so an edited kernel never loads a stale build,
a first build says on stderr why the call is slow, torch's import-time CUDA warning stays quiet, and a failed
build leaves one readable reason line (and a warning) so callers can keep their PyTorch path. What differs
(the folder name, the compiler flags to try in turn, the wording) is passed in.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CppExtension", "build_seconds"]

# seconds this process spent building (or waiting on another process's build of) a kernel: a once-per-machine
# cost that a benchmark reports apart from the work it measures
_BUILD = [0.0]


def build_seconds() -> float:
    """This process's running total of kernel build time (first builds only; a cached build loads)."""
    return _BUILD[0]


class CppExtension:
    """One C++ source, built and loaded at most once per process.

    ``name(flags)`` names the build folder for a flag set; ``flag_sets`` are tried in turn (a flag this
    compiler lacks falls back to the next set); ``label`` names the kernel in messages and ``fallback`` says
    what runs instead when it is unavailable. After a failed attempt ``error`` holds the reason and the
    build is not retried in this process.
    """

    def __init__(
        self,
        source: Path,
        *,
        name: Callable[[Sequence[str]], str],
        flag_sets: Sequence[Sequence[str]],
        label: str,
        fallback: str,
    ) -> None:
        self.source = source
        self.name = name
        self.flag_sets = [list(f) for f in flag_sets]
        self.label = label
        self.fallback = fallback
        self.module: Any = None
        self.error: str | None = None

    def load(self, *, build: bool = True) -> Any:
        """The compiled module, or None (disabled, no compiler, or not built yet with ``build=False``)."""
        if self.module is not None or self.error is not None:
            return self.module
        if os.environ.get("TICKETSEARCH_NO_EXT", "") not in ("", "0"):
            self.error = "disabled by TICKETSEARCH_NO_EXT"
            return None
        if not self.source.is_file():
            self.error = f"kernel source {self.source} is missing from the installation"
            return None
        errors = []
        try:
            import logging

            # silence the module's import-time warning about CUDA before importing it
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils import cpp_extension
        except Exception as exc:  # a torch build without the extension tooling
            errors.append(_reason(exc))
        else:
            for flags in self.flag_sets:
                name = self.name(flags)
                try:
                    d = cpp_extension._get_build_directory(name, verbose=False)
                    built = any(f.startswith(name) and f.endswith(".so") for f in os.listdir(d))
                    if not built:
                        if not build:
                            return None
                        print(
                            f"ticketsearch: building the {self.label} CPU kernel (once per machine, about a "
                            "minute; TICKETSEARCH_NO_EXT=1 skips it)",
                            file=sys.stderr,
                            flush=True,
                        )
                    t0 = time.perf_counter()
                    try:
                        self.module = cpp_extension.load(
                            name=name, sources=[str(self.source)], extra_cflags=flags, verbose=False
                        )
                    finally:
                        if not built:
                            _BUILD[0] += time.perf_counter() - t0
                    return self.module
                except Exception as exc:  # no compiler, no ninja, a flag this compiler lacks: next flags
                    errors.append(_reason(exc))
        self.error = errors[-1]
        # stacklevel 3: the warning points at whoever asked the kernel module for its extension
        warnings.warn(
            f"{self.label}: compiled CPU kernel unavailable ({self.error}); using {self.fallback}",
            stacklevel=3,
        )
        return None


def _reason(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"
