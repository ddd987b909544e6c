"""`hin caption`: captions for pictures or precomputed features."""

from __future__ import annotations

import argparse
import sys

from hin.cli.options import VOCAB_HELP, add_decoding_options, add_device_option, decoding, say_unfamiliar
from hin.errors import UsageError


def _caption(args: argparse.Namespace) -> int:
    import json

    from hin.caption import Captioner, picture_paths

    precomputed = (args.grid, args.region, args.ids)
    if args.pictures and any(value is not None for value in precomputed):
        raise UsageError("give pictures or --grid/--region/--ids, not both")
    if not args.pictures and None in precomputed:
        raise UsageError("give pictures, or all of --grid, --region and --ids")
    pictures = picture_paths(args.pictures)
    captioner = Captioner(args.checkpoint, vocab=args.vocab, device=args.device,
                          decoding=decoding(args), batch_size=args.batch_size,
                          max_regions=args.max_regions)
    for note in captioner.notes:
        print(f"hin caption: note: {note}", file=sys.stderr)
    results = (captioner.caption_pictures(pictures) if pictures
               else captioner.caption_features(args.grid, args.region, args.ids))
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        print("\n".join(str(result) for result in results))
    say_unfamiliar("caption", [result.unfamiliar for result in results])
    return 0


def add_caption_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("caption", help="caption pictures (or precomputed features) with a "
                                            "checkpoint")
    p.add_argument("pictures", nargs="*", help="picture files (jpg, png, ...) or folders of them")
    p.add_argument("--checkpoint", required=True, help="hin checkpoint")
    p.add_argument("--grid", help="precomputed grid feature HDF5 (with --region and --ids)")
    p.add_argument("--region", help="precomputed region feature HDF5")
    p.add_argument("--ids", type=int, nargs="+", help="image ids to caption from the files")
    p.add_argument("--vocab", help=VOCAB_HELP)
    p.add_argument("--max-regions", type=int,
                   help="regions per image (default: as many as the checkpoint was trained with)")
    add_decoding_options(p, num_captions=True)
    p.add_argument("--batch-size", type=int, default=8, help="pictures captioned at once")
    add_device_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_caption)


