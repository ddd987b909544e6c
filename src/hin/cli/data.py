"""`hin data`: the synthetic dataset, feature checks, the vocabulary."""

from __future__ import annotations

import argparse


def _data_synth(args: argparse.Namespace) -> int:
    import time

    from hin.synth import generate

    started = time.perf_counter()
    manifest = generate(args.out, seed=args.seed, train=args.train, val=args.val, test=args.test,
                        min_freq=args.min_freq, overwrite=args.force)
    splits = ", ".join(f"{name} {stats['images']} images / {stats['captions']} captions"
                       for name, stats in manifest["splits"].items())
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s: {splits}; "
          f"vocabulary {manifest['vocabulary']['size']} words")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from hin.config import HINConfig
    from hin.data.coco import SPLITS, load_splits
    from hin.data.features import FeatureStore, read_attributes

    splits = load_splits(args.annotations, args.split or SPLITS)   # refused before any feature is read
    paper = HINConfig()
    if args.checkpoint:
        from hin.checkpoint.opening import FEATURE_FLAGS, open_checkpoint
        from hin.checkpoint.record import require_matching_features

        opened = open_checkpoint(args.checkpoint)
        require_matching_features(args.checkpoint, opened.record,
                                  {"grid": args.grid, "region": args.region}, FEATURE_FLAGS)
        paper = opened.model.config
    grid_dim = args.grid_dim or read_attributes(args.grid).get("feature_dim", paper.grid_dim)
    region_dim = args.region_dim or read_attributes(args.region).get("feature_dim",
                                                                     paper.region_dim)
    store = FeatureStore(args.grid, args.region, grid_dim=grid_dim, region_dim=region_dim)
    healthy = True
    for name, split in splits.items():
        problems = store.check(split.image_ids, read_values=not args.shapes_only)
        print(f"[{name}] {split.source}: {len(split.images)} images, "
              f"{sum(len(image.captions) for image in split.images.values())} captions")
        print(problems.summary())
        healthy = healthy and problems.ok
    return 0 if healthy else 1


def _data_vocab(args: argparse.Namespace) -> int:
    from hin.data.coco import load_splits
    from hin.data.vocab import Vocabulary
    from hin.files import check_writable, refuse_overwriting

    refuse_overwriting(args.out, {"--legacy": args.legacy, "--annotations": args.annotations},
                       "give --out another path")
    check_writable(args.out, "--out")
    if args.legacy:
        vocab = Vocabulary.from_legacy_pickle(args.legacy)
    else:
        splits = load_splits(args.annotations, ["train", "val"])
        captions = splits["train"].captions() + splits["val"].captions()
        vocab = Vocabulary.build(captions, min_freq=args.min_freq, progress=True)
    vocab.save(args.out)
    print(f"wrote {args.out}: {len(vocab)} entries")
    return 0


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    from hin.config import DataConfig, HINConfig

    defaults, model = DataConfig(), HINConfig()
    data = commands.add_parser("data", help="datasets: synthetic set, feature checks, vocabulary")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = actions.add_parser("synth", help="write the synthetic captioning dataset (COCO formats)")
    p.add_argument("--out", required=True, help="directory to write (e.g. data/synth)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes drawn and their captions")
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--val", type=int, default=250, help="validation images")
    p.add_argument("--test", type=int, default=250, help="test images")
    p.add_argument("--min-freq", type=int, default=5, help="vocabulary: minimum word frequency")
    p.add_argument("--force", action="store_true", help="overwrite the files of an earlier run")
    p.set_defaults(handler=_data_synth)

    p = actions.add_parser("check", help="find every missing or malformed feature entry of splits")
    p.add_argument("--annotations", default=defaults.annotations,
                   help="annotation directory (COCO json + Karpathy .npy) or dataset_coco.json")
    p.add_argument("--grid", default=defaults.grid_features, help="grid feature HDF5 file")
    p.add_argument("--region", default=defaults.region_features, help="region feature HDF5 file")
    p.add_argument("--split", action="append", choices=["train", "val", "test"],
                   help="split to check (repeatable; default: all three)")
    p.add_argument("--grid-dim", type=int, help="expected grid feature size (default: the "
                   f"size the file records, else {model.grid_dim})")
    p.add_argument("--region-dim", type=int, help="expected region feature size (default: the "
                   f"size the file records, else {model.region_dim})")
    p.add_argument("--shapes-only", action="store_true",
                   help="check names and shapes only, skip reading values for NaN/inf")
    p.add_argument("--checkpoint", help="also refuse feature files of another extraction than "
                                        "this checkpoint was trained on (and expect its sizes)")
    p.set_defaults(handler=_data_check)

    p = actions.add_parser("vocab", help="build the vocabulary from train+val captions, "
                                         "or import the reference's pickle")
    p.add_argument("--out", required=True, help="vocabulary JSON file to write")
    p.add_argument("--annotations", default=defaults.annotations,
                   help="annotation directory or dataset_coco.json")
    p.add_argument("--min-freq", type=int, default=5,
                   help="keep words seen at least this often in the train + val captions")
    p.add_argument("--legacy", help="import this legacy vocabulary pickle instead (read safely)")
    p.set_defaults(handler=_data_vocab)
