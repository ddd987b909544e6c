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


def _score(args: argparse.Namespace) -> int:
    import json

    from hin.metrics import read_coco_references, read_coco_results, score_captions

    captions = read_coco_results(args.results)
    references = read_coco_references(args.annotations)
    if args.only_results:
        references = {i: refs for i, refs in references.items() if i in captions}
    report = score_captions(captions, references, collapse_repeats=not args.keep_repeats,
                            spice=not args.no_spice)
    print(report.format_table())
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report.to_dict(), handle, indent=2)
        print(f"wrote {args.out}")
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

    p = commands.add_parser("score", help="score a COCO results file (BLEU, METEOR, ROUGE-L, "
                                          "CIDEr, SPICE) against COCO caption annotations")
    p.add_argument("--results", required=True,
                   help='captions.json: [{"image_id": ..., "caption": ...}, ...]')
    p.add_argument("--annotations", required=True, help="e.g. captions_val2014.json")
    p.add_argument("--only-results", action="store_true",
                   help="score only the annotated images that have a result (default: all "
                        "annotated images, each must have one)")
    p.add_argument("--keep-repeats", action="store_true",
                   help='do not collapse immediately repeated words ("a a dog" -> "a dog")')
    p.add_argument("--no-spice", action="store_true", help="skip SPICE (slow)")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.set_defaults(handler=_score)
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
