"""Command line: ``python -m ticketsearch {find,train,list} ...``; dispatch and error mapping only.

Errors the user can fix print one line (``error: ...``) and exit with code 2 — argparse's own errors too,
with a pointer to the subcommand's ``--help`` instead of the whole usage; an interrupted run says how to
resume it (rerun the same command: finished levels are kept, the level in progress resumes).

Under torchrun every process runs this; an error that every rank meets is printed by rank 0 alone (the
others' copy is marked ``quiet``), and each rank that loses the others says so in its own line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .core.errors import TicketsearchError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what>; see 'ticketsearch find --help'``."""

    def error(self, message: str) -> NoReturn:
        if not _secondary_rank():  # every torchrun rank parses the same arguments: rank 0 says it
            sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def _secondary_rank() -> bool:
    """A torchrun process other than rank 0 (its argument errors are rank 0's too)."""
    return "WORLD_SIZE" in os.environ and os.environ.get("RANK", "0").strip() not in ("", "0")


def build_parser() -> argparse.ArgumentParser:
    from .commands import COMMANDS

    parser = _Parser(
        prog="ticketsearch",
        description="Find winning lottery tickets: IMP, saliency scorers (SNIP, GraSP, SynFlow, ...) and "
        "learned supermasks.",
    )
    names = COMMANDS.names()
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(names) + "}", parser_class=_Parser)
    for name in names:
        cmd = COMMANDS.get(name)()
        p = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.add_args(p)
        p.set_defaults(_command=cmd)
    return parser


def _quiet_stdout() -> None:
    """``ticketsearch list methods | head``: the reader left; send what is left to /dev/null."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:  # argparse would blame the top-level parser; point at the subcommand's help instead
        prog = f"ticketsearch {ns.command}" if ns.command else "ticketsearch"
        if not _secondary_rank():
            print(f"error: unrecognized arguments: {' '.join(extra)} (see '{prog} --help')", file=sys.stderr)
        return 2
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        return ns._command.run(ns)
    except TicketsearchError as exc:
        if not getattr(exc, "quiet", False):
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment, not a bug: a full disk, a read-only or vanished path
        if isinstance(exc, BrokenPipeError):
            _quiet_stdout()
            return 0
        if getattr(exc, "quiet", False):
            return 2
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished levels are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
