"""The `hin` command: parses arguments and calls the library; no logic of its own lives here."""

from __future__ import annotations

import argparse
import sys


def _import_checkpoint(args: argparse.Namespace) -> int:
    from hin.checkpoint import import_reference, save

    model = import_reference(args.reference, num_heads=args.heads)
    save(args.out, model)
    print(f"wrote {args.out} ({model.config.num_layers} layers, d_model {model.config.d_model}, "
          f"vocab {model.config.vocab_size}, {args.heads} heads)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("import-checkpoint",
                            help="convert a reference HIN checkpoint (.pth) into hin's format")
    p.add_argument("reference", help="reference checkpoint: a state_dict or {'state_dict': ...}")
    p.add_argument("out", help="where to write the hin checkpoint (.pt)")
    p.add_argument("--heads", type=int, default=8,
                   help="attention heads (not recoverable from tensor shapes; paper: 8)")
    p.set_defaults(handler=_import_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"hin {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
