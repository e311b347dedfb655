"""Each subcommand's reference page, generated from its argparse parser (the docs site's ``commands/`` pages).

The pages are built from the same parser the CLI uses (``cli.build_parser``), at every docs build, so a
flag added, renamed or re-documented in code shows up in the docs without anyone editing them: the
reference cannot drift. ``docs/hooks.py`` calls :func:`reference_pages`.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["command_reference", "reference_pages", "commands_index"]

_NOTE = (
    "<!-- generated from the argparse parser by ticketsearch.commands.reference at docs build time; "
    "edit the command's code, not this page -->"
)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from ..cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise RuntimeError("the CLI parser has no subcommands")  # pragma: no cover - a broken cli.py


def _text(text: str) -> str:
    """Help text as markdown prose: ``<suite>`` is a placeholder, not an HTML tag, and ``_`` in
    ``replicate_<seed>`` is not emphasis (code spans in backticks are left as they are)."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("_", "\\_").replace("*", "\\*")
    return "".join(parts)


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return names
    meta = action.metavar or (
        action.dest.upper() if not action.choices else "{" + ",".join(action.choices) + "}"
    )
    return f"{names} `{meta}`"


def _default(action: argparse.Action) -> str:
    d = action.default
    if action.nargs == 0 or d is None or d is argparse.SUPPRESS or d == "":
        return ""
    return f"`{d}`"


def command_reference(name: str, parser: argparse.ArgumentParser | None = None) -> str:
    """The markdown reference of ``ticketsearch <name>``: its description, usage and every flag by group,
    with its default and help text as ``--help`` prints them."""
    from .base import COMMANDS

    parser = parser if parser is not None else _subparsers()[name]
    cmd = COMMANDS.get(name)
    parser.prog = f"ticketsearch {name}"
    lines = [
        f"# ticketsearch {name}",
        "",
        _NOTE,
        "",
        _text(cmd.description or cmd.help),
        "",
        "```text",
        argparse.HelpFormatter(parser.prog, width=78)
        ._format_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "usage: ")
        .strip(),
        "```",
        "",
    ]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = group.title or "options"
        lines += [f"## {title[0].upper() + title[1:]}", ""]
        if group.description:
            lines += [_cell(group.description), ""]
        lines += ["| flag | default | what it does |", "|---|---|---|"]
        for a in actions:
            text = (a.help or "") % {"default": a.default, "prog": parser.prog} if a.help else ""
            lines.append(f"| {_flag(a)} | {_default(a)} | {_cell(text)} |")
        lines.append("")
    lines += [
        "Errors you can fix (a bad value, a missing file) print one line starting with `error:` and exit "
        "with code 2; nothing half-written is left behind.",
        "",
    ]
    return "\n".join(lines)


def commands_index() -> str:
    """The commands' overview page: one line per subcommand, linking its reference."""
    from .base import COMMANDS

    lines = [
        "# Commands",
        "",
        _NOTE,
        "",
        "Every command is `python -m ticketsearch <command>` (or `ticketsearch <command>` once installed) "
        "and has `--help`. Each page below is generated from the command's own parser.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name in COMMANDS.names():
        lines.append(f"| [`{name}`]({name}.md) | {_cell(COMMANDS.get(name).help)} |")
    return "\n".join(lines) + "\n"


def reference_pages() -> dict[str, str]:
    """``{"commands/<name>.md": markdown}`` for every registered subcommand, plus ``commands/index.md``."""
    pages = {f"commands/{name}.md": command_reference(name, p) for name, p in _subparsers().items()}
    pages["commands/index.md"] = commands_index()
    return pages
