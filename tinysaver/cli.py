"""The ``tinysaver`` command line: one sub-command per module in :mod:`tinysaver.commands`, plus
the commands plugins declare in the entry-point group ``tinysaver.commands`` (``tinysaver yolo``
comes from the ultralytics plugin that way: the core names no plugin).

Command modules import only the standard library at import time, so ``tinysaver select`` starts
fast; heavy libraries (torch, matplotlib) are imported by the commands that need them.
Input problems (:class:`~tinysaver.errors.TinySaverError`) become one line on stderr and exit 2.
Each command's ``--help`` ends with an example that runs on what ``make demo`` writes.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata
from typing import Dict, List, NoReturn, Optional

from . import __version__
from .errors import TinySaverError

#: sub-command name -> module with ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {
    "select": "tinysaver.commands.select",
    "tradeoff": "tinysaver.commands.tradeoff",
    "complexity": "tinysaver.commands.complexity",
    "record": "tinysaver.commands.record",
    "imagenet": "tinysaver.commands.imagenet",
    "det-tradeoff": "tinysaver.commands.det_tradeoff",
    "det-signals": "tinysaver.commands.det_signals",
    "chain": "tinysaver.commands.chain",
    "plan": "tinysaver.commands.plan",
    "calibrate": "tinysaver.commands.calibrate",
    "export": "tinysaver.commands.export",
    "serve": "tinysaver.commands.serve",
}
#: entry-point group of commands that plugins add (name -> module, like COMMANDS)
COMMAND_GROUP = "tinysaver.commands"


def all_commands() -> Dict[str, str]:
    """The built-in commands and those plugins declare (a plugin cannot replace a built-in)."""
    found = {ep.name: ep.value for ep in metadata.entry_points(group=COMMAND_GROUP)}
    return {**COMMANDS, **{name: module for name, module in found.items() if name not in COMMANDS}}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other input error (exit 2):
    ``tinysaver chain: error: argument --thresholds: ... (see tinysaver chain --help)``.

    argparse prints the usage block first, which splits the message over several lines; the usage
    is one ``--help`` away, named in the line. Sub-command parsers inherit the class.
    """

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``tinysaver`` parser; with ``command`` (a built-in command's name) only that command's
    module is imported (a command such as ``tradeoff`` then starts without importing the others
    and without scanning the installed packages' entry points)."""
    parser = OneLineParser(
        prog="tinysaver",
        description="TinySaver: a tiny pre-trained model answers the inputs it is sure about, "
                    "a large model the rest.",
        epilog="Run `tinysaver COMMAND --help` for a command's options and an example.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {command: COMMANDS[command]} if command in COMMANDS else all_commands()
    for name, module_name in commands.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        # The docstring's closing "Example..." block goes after the options, where --help ends.
        description, found, example = doc.partition("\nExample")
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=description,
                           epilog="Example" + example if found else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)  # the command, unless --help/--version
    args = build_parser(first if argv and argv[0] == first else None).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except TinySaverError as exc:
        print(f"tinysaver {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
