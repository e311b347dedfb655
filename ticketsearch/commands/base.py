"""A subcommand is a class with ``add_args`` and ``run``, registered by name (open_lth's runner registry,
Optuna's ``_COMMANDS``): adding one is one module here and one line in ``commands/__init__.py``."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from typing import ClassVar

from ..core.registry import Registry

__all__ = ["Command", "COMMANDS", "register_command"]


class Command(ABC):
    """One subcommand. ``help`` is its line in ``ticketsearch --help``; ``description`` heads its own
    ``--help``. ``run`` returns the exit code; user errors are raised as ``TicketsearchError`` and turned
    into one ``error:`` line by the CLI."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @abstractmethod
    def add_args(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's flags (shared groups come from ``commands.flags``)."""

    @abstractmethod
    def run(self, ns: argparse.Namespace) -> int:
        """Do the work; return the exit code."""


COMMANDS: Registry[type[Command]] = Registry("command")


def register_command(name: str):
    def deco(cls: type[Command]) -> type[Command]:
        cls.name = name
        COMMANDS.add(name, cls, description=cls.help)
        return cls

    return deco
