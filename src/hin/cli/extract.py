"""`hin extract`: features from pictures (or a VinVL TSV import), as HDF5."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from hin.cli.options import HelpFormatter, add_device_option
from hin.errors import UsageError

if TYPE_CHECKING:
    from hin.extract import PictureExtractor

EXTRACTOR_HELP = "a registered {kind} extractor: {names} (default %(default)s)"


class RegistryHelp(HelpFormatter):
    """Fills `--extractor`'s help from the registry when help is shown, not when the parser is
    built: the registry fills as `hin.extract` imports its extractors (and torch), which every
    other command must not wait for."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest != "extractor":
            return super()._get_help_string(action)
        from hin.extract import EXTRACTORS

        kind = EXTRACTORS[action.default].kind
        names = sorted(name for name, extractor in EXTRACTORS.items() if extractor.kind == kind)
        return EXTRACTOR_HELP.format(kind=kind, names=", ".join(names))


def _extract_pictures(build: Callable[[], PictureExtractor], args: argparse.Namespace) -> int:
    """List the pictures and check the settings, then `build` the extractor (a model load)."""
    from hin.extract import choose_shard, extract_to_file
    from hin.extract.images import find_images, max_pixels

    listing = find_images(args.images, ids_from=args.ids_from)
    files = listing.files
    skipped = listing.skipped_note()
    if skipped:
        print(f"hin extract: note: {args.images}: {skipped}", file=sys.stderr)
    shard = choose_shard(args.shard)
    max_pixels()
    report = extract_to_file(build(), files, args.out, batch_size=args.batch_size,
                             chunk_size=args.chunk_size, workers=args.workers, shard=shard,
                             orientation=args.orientation, force=args.force)
    print(report.summary())
    return 1 if report.failed else 0


def _extraction_device(args: argparse.Namespace) -> str:
    """--device; `auto` under torchrun is this rank's GPU (LOCAL_RANK), one shard per GPU."""
    from hin.devices import resolve_device

    return str(resolve_device(args.device, local_rank=int(os.environ.get("LOCAL_RANK", "0"))))


def _extract_grid(args: argparse.Namespace) -> int:
    from hin.extract import build_extractor

    options = {"model": args.model, "store_as": args.store_as}
    return _extract_pictures(lambda: build_extractor(
        args.extractor, device=_extraction_device(args), precision=args.precision,
        **{k: v for k, v in options.items() if v is not None}), args)


def _extract_nms_mode(args: argparse.Namespace) -> int:
    from hin.extract import nms_mode_report

    print(nms_mode_report(args.features))
    return 0


def _extract_merge(args: argparse.Namespace) -> int:
    from hin.extract import merge_shards

    print(merge_shards(args.out, args.shards).summary())
    return 0


def _extract_regions(args: argparse.Namespace) -> int:
    from hin.extract import build_extractor, import_vinvl

    if args.vinvl_tsv:
        for flag, given in (("--shard", args.shard), ("--force", args.force)):
            if given:
                raise UsageError(f"{flag} is for extraction from pictures; a VinVL TSV import "
                                 f"runs whole (drop {flag})")
        report = import_vinvl(args.vinvl_tsv, args.out, args.predictions,
                              dtype=args.store_as or "float16")
        print(report.summary())
        return 0
    if args.extractor == "vinvl-x152c4":
        other = [flag for flag, value in (("--model", args.model), ("--revision", args.revision),
                                          ("--threshold", args.threshold),
                                          ("--max-regions", args.max_regions)) if value is not None]
        if other:
            raise UsageError(f"{', '.join(other)} do not apply to vinvl-x152c4 (its settings are "
                             "the original's: score 0.2, 10 to 100 regions); drop them")
        options = {"weights": args.weights, "nms_filter": args.nms_filter,
                   "store_as": args.store_as, "oscar_rows": args.oscar_rows or None,
                   "attributes": args.attributes or None}
    else:
        vinvl_only = [flag for flag, value in (("--weights", args.weights),
                                               ("--nms-filter", args.nms_filter),
                                               ("--oscar-rows", args.oscar_rows),
                                               ("--attributes", args.attributes)) if value]
        if vinvl_only:
            raise UsageError(f"{', '.join(vinvl_only)} set the vinvl-x152c4 extractor; add "
                             "--extractor vinvl-x152c4 or drop them")
        options = {"model": args.model, "revision": args.revision,
                   "threshold": args.threshold, "max_regions": args.max_regions,
                   "store_as": args.store_as}
    return _extract_pictures(lambda: build_extractor(
        args.extractor, device=_extraction_device(args), precision=args.precision,
        **{k: v for k, v in options.items() if v is not None}), args)


def add_extract_commands(commands: argparse._SubParsersAction) -> None:
    from hin.config import EXTRACT_ORIENTATION, EXTRACTION_PRECISIONS, ORIENTATIONS, STORAGE_DTYPES

    extract = commands.add_parser("extract", help="features from pictures (CLIP grid, DETR "
                                                  "regions) or VinVL TSV import, as HDF5")
    actions = extract.add_subparsers(dest="extract_command", required=True, metavar="ACTION")

    def add_run_options(p: argparse.ArgumentParser, batch_size: int, float32_use: str) -> None:
        p.add_argument("--batch-size", type=int, default=batch_size, help="pictures per forward pass")
        p.add_argument("--chunk-size", type=int, default=512,
                       help="images per atomically written part (a kill loses at most one)")
        p.add_argument("--workers", type=int, default=2, help="picture decoding processes")
        add_device_option(p)
        p.add_argument("--precision", default="fp32", choices=EXTRACTION_PRECISIONS,
                       help="fp32 (default: exact, the arithmetic the released features "
                            "were computed in), bf16 autocast (fast on CUDA and on CPUs with "
                            "avx512_bf16/AMX), fp16 weights (CUDA only, fast, not the "
                            "reference's), or auto (bf16 where the device runs it fast)")
        p.add_argument("--store-as", choices=STORAGE_DTYPES,
                       help="stored feature dtype: float16 (default, half the disk) or float32 "
                            f"({float32_use}); the synthetic world's extractors store "
                            "float16 only")
        p.add_argument("--orientation", default=EXTRACT_ORIENTATION, choices=ORIENTATIONS,
                       help="exif: upright by the EXIF tag, as hin caption/explain/serve read "
                            "pictures (for your own photos); stored: pixels as stored, as the "
                            "reference's extraction and COCO's annotators saw them (to remake "
                            "the released COCO features); recorded in the file")
        p.add_argument("--ids-from", metavar="ANNOTATIONS",
                       help="take each picture's image id from this caption file, by file name "
                            "(Karpathy's dataset_flickr8k/30k.json: imgid; nocaps: id), not "
                            "from the file name's digits")
        p.add_argument("--force", action="store_true",
                       help="discard what OUT holds and extract every picture again (a re-run "
                            "otherwise resumes, and refuses pictures changed since their "
                            "features were written)")
        p.add_argument("--shard", metavar="K/N",
                       help="extract only shard K of N of the pictures (sorted by id) into "
                            "OUT.shard-K-of-N.h5, joined later by `hin extract merge OUT`; "
                            "under torchrun the default is one shard per rank")

    p = actions.add_parser("grid", formatter_class=RegistryHelp,
                           help="CLIP grid features: <id>_features [256, 1024] and <id>_global [768] "
                                "(float16, or --store-as float32)")
    p.add_argument("--images", required=True,
                   help="folder of pictures, or a text file listing one path per line")
    p.add_argument("--out", required=True, help="grid HDF5 file (re-running resumes)")
    p.add_argument("--extractor", default="clip-grid", help=EXTRACTOR_HELP)
    p.add_argument("--model", help="CLIP checkpoint: hub name (from the HF cache) or local "
                                   "folder (default openai/clip-vit-large-patch14)")
    add_run_options(p, batch_size=32, float32_use="as the reference stored its CLIP grids")
    p.set_defaults(handler=_extract_grid)

    p = actions.add_parser("regions", formatter_class=RegistryHelp, help="region features: import VinVL TSV, or detect "
                                           "in pictures with a built-in extractor")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--vinvl-tsv", help="VinVL features.tsv (what the paper used)")
    source.add_argument("--images", help="folder of pictures, or a text file of paths")
    p.add_argument("--out", required=True, help="region HDF5 file (re-running resumes)")
    p.add_argument("--predictions", help="VinVL predictions.tsv (boxes, size, confidences)")
    p.add_argument("--extractor", default="detr", help=EXTRACTOR_HELP)
    p.add_argument("--model", help="detector checkpoint (default facebook/detr-resnet-50)")
    p.add_argument("--revision", help="hub revision (default for DETR: no_timm)")
    p.add_argument("--threshold", type=float, help="minimum class probability (default 0.5)")
    p.add_argument("--max-regions", type=int, help="regions kept per picture (default 50)")
    p.add_argument("--weights", help="vinvl-x152c4: the detector's weights, "
                                     "vinvl_vg_x152c4.pth (593 MB, never downloaded)")
    p.add_argument("--nms-filter", type=int, choices=(1, 2),
                   help="vinvl-x152c4 post-processing: 1 per-class NMS (default, the "
                        "maintainers' command) or 2 class-agnostic NMS at 0.5")
    p.add_argument("--oscar-rows", action="store_true",
                   help="vinvl-x152c4: also write <id>_oscar [n, 2054], Oscar/VinVL "
                        "features.tsv rows (feature + 6 box-geometry values)")
    p.add_argument("--attributes", action="store_true",
                   help="vinvl-x152c4: also run the attribute head (<id>_attr_labels, "
                        "<id>_attr_scores [n, 16])")
    add_run_options(p, batch_size=8,
                    float32_use="vinvl-x152c4's default, as VinVL released its features")
    p.set_defaults(handler=_extract_regions)

    p = actions.add_parser("nms-mode", help="tell which VinVL post-processing mode (nms_filter "
                                            "1 or 2) made a region file, from its boxes")
    p.add_argument("features", help="region HDF5 file with <id>_boxes")
    p.set_defaults(handler=_extract_nms_mode)

    p = actions.add_parser("merge", help="join the shard files of a --shard K/N extraction into "
                                         "its output, once every shard has finished")
    p.add_argument("out", help="the output file the shards were run with (--out)")
    p.add_argument("shards", nargs="*",
                   help="shard files (default: every OUT.shard-K-of-N.h5 beside OUT)")
    p.set_defaults(handler=_extract_merge)


