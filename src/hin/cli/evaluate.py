"""`hin evaluate` (caption a split and score it) and `hin score` (score a results file)."""

from __future__ import annotations

import argparse
import sys

from hin.cli.options import VOCAB_HELP, add_decoding_options, add_device_option, decoding


def _score(args: argparse.Namespace) -> int:
    from hin.data.coco import read_coco_references
    from hin.files import check_writable, refuse_overwriting, write_json
    from hin.metrics import read_coco_results, score_captions

    if args.out:
        refuse_overwriting(args.out, {"--results": args.results,
                                      "--annotations": args.annotations},
                           "give --out another path (the metrics go into a file of their own)")
        check_writable(args.out, "--out")
    captions = read_coco_results(args.results)
    references = read_coco_references(args.annotations)
    if args.only_results:
        references = {i: refs for i, refs in references.items() if i in captions}
    report = score_captions(captions, references, collapse_repeats=not args.keep_repeats,
                            spice=not args.no_spice)
    print(report.format_table())
    if args.out:
        write_json(args.out, report.to_dict())
        print(f"wrote {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from hin.config import DataConfig
    from hin.evaluate import evaluate

    data = DataConfig(annotations=args.annotations, grid_features=args.grid,
                      region_features=args.region, num_workers=args.workers)
    result = evaluate(args.checkpoint, args.split, data, decoding=decoding(args),
                      batch_size=args.batch_size, out_dir=args.out, spice=not args.no_spice,
                      device=args.device, vocab=args.vocab, max_regions=args.max_regions)
    for note in result.notes:
        print(f"hin evaluate: note: {note}", file=sys.stderr)
    if result.report is not None and result.cider_d is not None:
        print(result.report.format_table())
        print(f"CIDEr-D {100 * result.cider_d:.2f} (hin's, as validation during training "
              "scores it)")
    else:
        print(f"{len(result.captions)} images captioned; they have no references, so no metrics")
    for path in result.written:
        print(f"wrote {path}")
    return 0

def add_score_command(commands: argparse._SubParsersAction) -> None:
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


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    from hin.config import DataConfig

    data = DataConfig()
    p = commands.add_parser("evaluate", help="caption a split with one or more checkpoints "
                                             "(an ensemble), score it, write metrics.json and "
                                             "captions.json")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="hin checkpoint (repeat for an ensemble)")
    p.add_argument("--split", required=True, choices=["val", "test", "features"],
                   help="Karpathy val/test, or every image of the grid feature file (no "
                        "references: captions.json only, e.g. for the COCO server)")
    add_decoding_options(p)
    p.add_argument("--batch-size", type=int, default=50, help="images decoded at once")
    p.add_argument("--out", default="runs/evaluate", help="directory for the two JSON files")
    p.add_argument("--annotations", default=data.annotations,
                   help="annotation directory (COCO json + Karpathy .npy) or dataset_coco.json")
    p.add_argument("--grid", default=data.grid_features, help="grid feature HDF5 file")
    p.add_argument("--region", default=data.region_features, help="region feature HDF5 file")
    p.add_argument("--vocab", help=VOCAB_HELP)
    p.add_argument("--max-regions", type=int,
                   help="regions per image (default: as many as the checkpoint was trained with)")
    p.add_argument("--workers", type=int, default=data.num_workers, help="data loader workers")
    add_device_option(p)
    p.add_argument("--no-spice", action="store_true", help="skip SPICE (slow)")
    p.set_defaults(handler=_evaluate)


