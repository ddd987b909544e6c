"""The `hin` command: parses arguments, calls the library, and turns what goes wrong into one
line and an exit code (2 for a user's error, 130 for an interruption). One module per command
group; the library does the work."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import Any

from hin.cli.caption import add_caption_command
from hin.cli.checkpoint import add_import_checkpoint_command
from hin.cli.data import add_data_commands
from hin.cli.evaluate import add_evaluate_command, add_score_command
from hin.cli.explain import add_explain_command
from hin.cli.extract import add_extract_commands
from hin.cli.options import Parser, late_overrides
from hin.cli.serve import add_serve_command
from hin.cli.train import add_demo_command, add_plot_command, add_train_command
from hin.errors import HINError, Interrupted

__all__ = ["build_parser", "main"]


class _Version(argparse.Action):
    """`hin --version`: torch is imported only when asked, so `hin --help` stays fast."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from hin.devices import version_report

        print(version_report())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hin", description="HIN image captioning: data, training, evaluation, feature "
                                "extraction and captioning. `hin COMMAND --help` for details.")
    parser.add_argument("--version", action=_Version, help="print hin's version, torch's and the "
                                                          "CPU/GPU it sees, and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In the order a user meets them: try it, get data, train, evaluate, use, then the tools.
    for add in (add_demo_command, add_data_commands, add_train_command, add_evaluate_command,
                add_caption_command, add_explain_command, add_serve_command, add_extract_commands,
                add_import_checkpoint_command, add_score_command, add_plot_command):
        add(commands)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `key=value` overrides accepted anywhere after a command that
    takes them (`hin train --config C --init CKPT train.max_steps=2`): argparse alone takes
    positionals only before the first option that follows them."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not late_overrides(args, extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    previous = None
    with contextlib.suppress(ValueError):   # not the main thread: leave signals alone
        # SIGTERM unwinds like Ctrl-C, so every command cleans up (temporary files, workers,
        # Java children) and ends with one line instead of dying silently with 143.
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()          # a reader gone away is found here, not at exit
        return code
    except Interrupted as stopped:
        print(f"hin {args.command}: {stopped}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"hin {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`hin caption ... | head -1`): stop quietly, as
        # command-line tools do on SIGPIPE, and keep Python from failing again when it
        # flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (HINError, OSError) as error:
        # What the user gave us is wrong (or a path of theirs cannot be used): one line.
        # Anything else is a bug in hin and keeps its traceback.
        print(f"hin {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
