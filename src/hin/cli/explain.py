"""`hin explain`: attention-map figures beside the captions, and an index page."""

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


def _explain(args: argparse.Namespace) -> int:
    from hin.caption import picture_paths
    from hin.explain import PAPER_FILE, explain, write_figures
    from hin.explain.paper import PaperStyle

    checkpoints = one_checkpoint(args, "give the others with --compare (one column each)") + (
        args.compare or [])
    if not checkpoints:
        raise UsageError("give --checkpoint CKPT (and --compare CKPT2 for a second column), or "
                         "--compare BASE.pt OURS.pt")
    if args.paper and len(checkpoints) != 2:
        raise UsageError(f"--paper compares two models, got {len(checkpoints)} checkpoints: give "
                         "--compare BASE.pt OURS.pt (or --checkpoint OURS.pt --compare BASE.pt)")
    explanations = explain(
        checkpoints, pictures=picture_paths(args.pictures), ids=args.ids, grid=args.grid, region=args.region,
        images=args.images, annotations=args.annotations, split=args.split, limit=args.limit,
        layer=args.layer, words=args.words, labels=args.labels, decoding=decoding(args),
        device=args.device, batch_size=args.batch_size, vocab=args.vocab,
        extractor_weights=extractor_weights(args))
    layer_label = "mean over layers" if args.layer is None else f"layer {args.layer}"
    style = PaperStyle(width_in=args.width_in, marking=args.marking, map_style=args.map_style)
    paths = write_figures(explanations, args.out, layer_label, paper=args.paper, paper_style=style)
    for explanation, path in zip(explanations, paths):
        scores = [f"{v.label}: {v.caption}" + ("" if v.cider is None else f" (CIDEr-D x100 {100 * v.cider:.1f})")
                  for v in explanation.views]
        print(f"{path}  {explanation.name}: " + " | ".join(scores))
    paper = f", {args.out}/{PAPER_FILE}.png and .pdf" if args.paper else ""
    print(f"wrote {len(paths)} figure{'' if len(paths) == 1 else 's'}{paper} and {args.out}/index.html")
    for explanation in explanations:
        for note in explanation.notes:
            if note != explanation.unfamiliar:      # say_unfamiliar says those
                print(f"hin explain: note: {explanation.name}: {note}", file=sys.stderr)
    say_unfamiliar("explain", [e.unfamiliar for e in explanations])
    return 0


def _layer(value: str) -> int | None:
    if value == "mean":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer takes a layer number (1 = first) or 'mean', got {value!r}") from None


def add_explain_command(commands: argparse._SubParsersAction) -> None:
    from hin.config import PAPER_MAP_STYLES, PAPER_MARKINGS, TWO_COLUMN_INCHES

    p = commands.add_parser("explain", help="figures of where the model looks (attention maps) "
                                            "beside its captions, and an index.html")
    p.add_argument("pictures", nargs="*", help="picture files or folders of them (the checkpoint's "
                                               "recorded extractors are re-run on them)")
    add_checkpoint_option(p, required=False, help="hin checkpoint (the first column)")
    p.add_argument("--compare", metavar="CKPT", nargs="+",
                   help="checkpoints drawn in further columns: one beside --checkpoint, or two "
                        "without it (--compare BASE.pt OURS.pt, as the paper's figure)")
    p.add_argument("--labels", nargs="+", metavar="NAME",
                   help="column titles, one per checkpoint (default: the checkpoints' folder names)")
    p.add_argument("--paper", action="store_true",
                   help="also draw all images as one table in the paper's layout (Fig. 6: image | "
                        "grid maps | region maps | captions, marked words in red) to "
                        "OUT/paper_figure.png and .pdf; needs two checkpoints (baseline, then ours)")
    p.add_argument("--width-in", type=float, default=TWO_COLUMN_INCHES,
                   help="--paper: printed width in inches; the text is 7 pt at that width "
                        "(a one-column figure: about 3.5)")
    p.add_argument("--marking", choices=PAPER_MARKINGS, default="paper",
                   help="--paper: red words. paper: content words of the second model's caption "
                        "that occur in a reference and not in the first's (stop words never); "
                        "diff: every word of each caption that the other lacks")
    p.add_argument("--map-style", choices=PAPER_MAP_STYLES, default="contour",
                   help="--paper: contour outlines the maps over the picture in its true "
                        "colours; tint colours the picture as the single-image figures do")
    p.add_argument("--grid", help="grid feature HDF5 (with --region, and --ids or --split)")
    p.add_argument("--region", help="region feature HDF5")
    p.add_argument("--ids", type=int, nargs="+", help="image ids from the feature files")
    p.add_argument("--images", help="folder of the pictures, named by image id (e.g. "
                                    "COCO_val2014_000000391895.jpg or 391895.png)")
    p.add_argument("--annotations", help="annotations (directory or dataset_coco.json): with "
                                         "--split, the references and each image's CIDEr-D")
    p.add_argument("--split", choices=["train", "val", "test"], help="explain this split's images")
    p.add_argument("--limit", type=int, help="only the split's first N images")
    p.add_argument("--layer", type=_layer, default=None,
                   help="encoder/decoder layer to show (1 = first) or 'mean' (default)")
    p.add_argument("--words", nargs="?", const="grid", choices=["grid", "region"],
                   help="add a strip with one small map per generated word (decoder grid "
                        "attention, or region with --words region)")
    p.add_argument("--out", default="runs/explain", help="directory for the PNGs and index.html")
    add_checkpoint_inputs(p)
    add_decoding_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="images explained at once")
    add_device_option(p)
    p.set_defaults(handler=_explain)


