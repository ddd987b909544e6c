"""`hin caption`: captions for pictures or precomputed features."""

from __future__ import annotations

import argparse
import sys

from hin.cli.options import (
    add_checkpoint_inputs,
    add_checkpoint_option,
    add_decoding_options,
    add_device_option,
    decoding,
    extractor_weights,
    one_checkpoint,
    say_unfamiliar,
)
from hin.errors import UsageError


def _caption(args: argparse.Namespace) -> int:
    from hin.caption import Captioner, picture_listing
    from hin.files import json_text

    precomputed = (args.grid, args.region, args.ids)
    if args.pictures and any(value is not None for value in precomputed):
        raise UsageError("give pictures or --grid/--region/--ids, not both")
    if not args.pictures and None in precomputed:
        raise UsageError("give pictures, or all of --grid, --region and --ids")
    pictures, notes = picture_listing(args.pictures)
    checkpoint, = one_checkpoint(args, "give one (an ensemble is scored by `hin evaluate "
                                      "--checkpoint A --checkpoint B`)")
    captioner = Captioner(checkpoint, vocab=args.vocab, device=args.device,
                          decoding=decoding(args), batch_size=args.batch_size,
                          max_regions=args.max_regions, extractor_weights=extractor_weights(args))
    failed: list[str] = []
    if pictures:
        done = captioner.caption_readable(pictures)
        results, failed, notes = done.results, done.failed, notes + done.notes
    else:
        results = captioner.caption_features(args.grid, args.region, args.ids)
    for note in captioner.notes + notes:
        print(f"hin caption: note: {note}", file=sys.stderr)
    if args.json:
        print(json_text([result.to_dict() for result in results]), end="")
    elif results:
        print("\n".join(str(result) for result in results))
    say_unfamiliar("caption", [result.unfamiliar for result in results])
    if failed:
        print(f"hin caption: {len(failed)} of {len(pictures)} pictures could not be read "
              "(the others are captioned above):", file=sys.stderr)
        for why in failed:
            print(f"  {why}", file=sys.stderr)
    return 1 if failed else 0


def add_caption_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("caption", help="caption pictures (or precomputed features) with a "
                                            "checkpoint")
    p.add_argument("pictures", nargs="*", help="picture files (jpg, png, ...) or folders of them")
    add_checkpoint_option(p, required=True, help="hin checkpoint")
    p.add_argument("--grid", help="precomputed grid feature HDF5 (with --region and --ids)")
    p.add_argument("--region", help="precomputed region feature HDF5")
    p.add_argument("--ids", type=int, nargs="+", help="image ids to caption from the files")
    add_checkpoint_inputs(p)
    p.add_argument("--max-regions", type=int,
                   help="regions per image (default: as many as the checkpoint was trained with)")
    add_decoding_options(p, num_captions=True)
    p.add_argument("--batch-size", type=int, default=8, help="pictures captioned at once")
    add_device_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_caption)


