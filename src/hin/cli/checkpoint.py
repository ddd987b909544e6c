"""`hin import-checkpoint`: a reference checkpoint in hin's format."""

from __future__ import annotations

import argparse


def _import_checkpoint(args: argparse.Namespace) -> int:
    from hin.checkpoint import import_reference, save
    from hin.files import refuse_overwriting

    if not args.force:
        refuse_overwriting(args.out, {"the reference checkpoint": args.reference},
                           "give another output path (or --force to replace it)")
    model = import_reference(args.reference, num_heads=args.heads)
    save(args.out, model)
    print(f"wrote {args.out} ({model.config.num_layers} layers, d_model {model.config.d_model}, "
          f"vocab {model.config.vocab_size}, {args.heads} heads)")
    return 0


def add_import_checkpoint_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("import-checkpoint",
                            help="convert a reference HIN checkpoint (.pth) into hin's format")
    p.add_argument("reference", help="reference checkpoint: a state_dict or {'state_dict': ...}")
    p.add_argument("out", help="where to write the hin checkpoint (.pt)")
    p.add_argument("--heads", type=int, required=True,
                   help="attention heads: tensor shapes cannot tell (the paper's models: 8)")
    p.add_argument("--force", action="store_true", help="allow OUT to be the reference file")
    p.set_defaults(handler=_import_checkpoint)
