"""Subcommands, one module each; ``cli.py`` only dispatches and maps errors.

Add a subcommand: a module with a ``@register_command("name")`` class, imported below, and its test file.
"""

from __future__ import annotations

from . import bench, export, find, finetune, list_, smallest, study, train, transfer, transfer_matrix  # noqa: F401  (registers the built-in commands)
from .base import COMMANDS, Command, register_command

__all__ = ["COMMANDS", "Command", "register_command"]
