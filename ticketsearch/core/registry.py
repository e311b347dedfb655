"""A small typed registry: one per component kind (models, datasets, scorers).

Taken from timm's ``register_model`` and Optuna's plugin style: registering is explicit, a taken name raises
instead of silently overwriting, lookups of unknown names suggest the closest, and third-party entries are
discovered lazily through an entry-point group so a broken plugin cannot break the built-ins.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import UnknownNameError

__all__ = ["Registry", "Entry", "BrokenEntry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    source: str  # "built-in" or the distribution name of the plugin that provided it


@dataclass(frozen=True)
class BrokenEntry:
    name: str
    source: str
    error: str


def _first_doc_line(obj: object) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class Registry(Generic[T]):
    """Name → object, with suggestions for typos and optional entry-point discovery.

    ``kind`` is used in messages ("unknown model 'lenet'"). ``entry_point_group`` names the group scanned the
    first time the registry is listed or a name is missing (never at import time).
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._broken: dict[str, BrokenEntry] = {}
        self._reserved: dict[str, str] = {}  # name -> who holds it elsewhere (another registry's built-in)
        self._plugins_loaded = entry_point_group is None

    # -- registration -------------------------------------------------------------------------------
    def register(
        self, name: str, *, description: str | None = None, source: str = "built-in"
    ) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``. Raises if the name is taken."""

        def deco(obj: T) -> T:
            self.add(name, obj, description=description, source=source)
            return obj

        return deco

    def add(self, name: str, obj: T, *, description: str | None = None, source: str = "built-in") -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            prev = self._entries[name]
            raise ValueError(
                f"{self.kind} '{name}' is already registered (by {prev.source}); choose another name"
            )
        desc = description if description is not None else _first_doc_line(obj)
        self._entries[name] = Entry(name, obj, desc, source)

    def reserve(self, names: Iterable[str], *, holder: str = "a built-in method") -> None:
        """Names a plugin of this registry may not take because another registry owns them (IMP is a
        method strategy, so no scorer plugin may call itself ``imp``). A plugin already loaded under a
        reserved name is moved to the broken list."""
        for name in names:
            self._reserved[name] = holder
            entry = self._entries.get(name)
            if entry is not None and entry.source != "built-in":
                del self._entries[name]
                self._broken[f"{name} ({entry.source})"] = BrokenEntry(
                    name, entry.source, f"name '{name}' is already taken by {holder}"
                )

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugin reloads)."""
        self._entries.pop(name, None)

    # -- lookup -------------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            self.load_plugins()
        if name in self._entries:
            return self._entries[name]
        if name in self._broken:
            b = self._broken[name]
            raise UnknownNameError(f"{self.kind} '{name}' from {b.source} failed to load: {b.error}")
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} '{name}'{hint} (choose from: {', '.join(known)})"

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self.load_plugins()
        return name in self._entries

    def names(self, pattern: str | None = None) -> list[str]:
        self.load_plugins()
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
        return names

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def broken(self) -> list[BrokenEntry]:
        self.load_plugins()
        return [self._broken[n] for n in sorted(self._broken)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    # -- plugins ------------------------------------------------------------------------------------
    def load_plugins(self, *, force: bool = False) -> None:
        """Import every entry point of the group once; failures are recorded, not raised."""
        if self._plugins_loaded and not force:
            return
        self._plugins_loaded = True
        if self.entry_point_group is None:
            return
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            dist = getattr(ep, "dist", None)
            source = dist.name if dist is not None else ep.value
            if ep.name in self._reserved:
                self._broken[f"{ep.name} ({source})"] = BrokenEntry(
                    ep.name, source, f"name '{ep.name}' is already taken by {self._reserved[ep.name]}"
                )
                continue
            taken = self._entries.get(ep.name)
            if taken is not None and taken.source != source:  # a plugin never replaces another entry
                self._broken[f"{ep.name} ({source})"] = BrokenEntry(
                    ep.name, source, f"name '{ep.name}' is already taken by {taken.source}"
                )
                continue
            if taken is not None and not force:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the registry down
                self._broken[ep.name] = BrokenEntry(ep.name, source, f"{type(exc).__name__}: {exc}")
                continue
            if ep.name in self._entries:
                self._entries.pop(ep.name)
            self._broken.pop(ep.name, None)
            self.add(ep.name, obj, source=source)
