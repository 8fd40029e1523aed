"""The `tdlib` command line: argument parsing and error reporting only.

Each subcommand lives in its own module of this package with two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this module wires them
together. A `UserError`, an argparse error, or a full or unwritable filesystem
becomes one line on stderr starting ``error:`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from tdlib.errors import UserError

COMMANDS = {
    "train": "fine-tune a masked language model at every masking ratio",
    "generate": "write text by iterative unmasking",
    "evaluate": "likelihood bound and loss per mask ratio of a checkpoint",
    "monitor": "progress, speed and loss per ratio of a training run",
    "demo": "the main job: train the toy-language model offline, generate, and grade it exactly",
}

_FULL = "free some space or choose another folder (a stopped training run continues with --resume)"
_DENIED = "check the permissions or choose another folder"
FILESYSTEM_ERRORS = {  # errno -> what to do
    errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EROFS: _DENIED, errno.EACCES: _DENIED, errno.EPERM: _DENIED,
}

MAX_SEED = 2**32  # seeds are combined with step numbers, so they must stay far from int64 overflow


def seed_value(text: str) -> int:
    """argparse type of every --seed flag: an integer in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: use a whole number") from None
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {value} is out of range: use 0 .. {MAX_SEED - 1}")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one `error:` line and exit status 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand registered."""
    parser = _Parser(prog="tdlib", description="Text diffusion with masked language models.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"tdlib.cli.{name}")
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tdlib` and `python -m tdlib`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"error: {message}\n")
        return 2
    except OSError as exc:  # a full disk or a folder we may not write: the user's to fix, not a bug
        if exc.errno not in FILESYSTEM_ERRORS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"error: {exc.strerror}{where}; {FILESYSTEM_ERRORS[exc.errno]}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
