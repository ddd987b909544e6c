"""`hin demo`, `hin train` and `hin plot`: training runs and their curves."""

from __future__ import annotations

import argparse
import os
import sys
from shlex import quote

from hin.errors import UsageError


def _train(args: argparse.Namespace) -> int:
    from hin.config import RunConfig, apply_overrides, load_yaml
    from hin.training.loop import TrainingError, TrainingInterrupted
    from hin.training.run import resume, start

    if args.resume and args.init:
        raise UsageError("--init starts a new run; a resumed run continues from its last.pt")
    if args.accept_data_change and not args.resume:
        raise UsageError("--accept-data-change is for --resume: a new run records its data")
    try:
        if args.resume:
            best = resume(args.resume, args.overrides, accept_data_change=args.accept_data_change)
        else:
            given = apply_overrides(load_yaml(args.config), args.overrides)
            # With --init the checkpoint's model wins over the file's model section (a note
            # says so); model settings typed here must agree with it.
            typed = [text.partition("=")[0] for text in args.overrides]
            model_keys = ([key.removeprefix("model.") for key in typed if key.startswith("model.")]
                          if args.init else list(given.get("model") or {}))
            best = start(RunConfig.from_dict(given), init=args.init, model_keys=model_keys,
                         data_keys=list(given.get("data") or {}))
    except TrainingInterrupted as stopped:
        print(f"hin train: {stopped}", file=sys.stderr)
        return 130
    except TrainingError as error:
        print(f"hin train: error: {error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":   # under torchrun, one message, not one per process
        print(f"best checkpoint: {best}" if best.exists() else
              f"stopped before the first validation; continue with `hin train --resume {quote(str(best.parent))}`")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from hin.training.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hin.demo import DemoInterrupted, run_demo

    try:
        run_demo(args.data, args.runs, args.configs, force=args.force)
    except DemoInterrupted as stopped:
        print(f"hin demo: {stopped}", file=sys.stderr)
        return 130
    return 0


def add_train_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train HIN: cross-entropy, or SCST from an XE "
                                          "checkpoint; resumable, one process or torchrun")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML run configuration: a path, or the name of a "
                                          "shipped one (synth_xe, synth_scst; coco_xe, coco_scst: the "
                                          "reference's recipe; coco_xe_grouped, coco_scst_large: "
                                          "faster layouts; small_xe, small_scst for your own small "
                                          "data set)")
    source.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    p.add_argument("--init", help="start from this hin checkpoint's weights (SCST from XE best.pt)")
    p.add_argument("--accept-data-change", action="store_true",
                   help="with --resume at an epoch boundary: train on with data that differs "
                        "from what the run recorded (otherwise refused)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.batch_size=20 run_dir=runs/try")
    p.set_defaults(handler=_train)


def add_plot_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("plot", help="draw a run's loss, learning rate and validation "
                                         "metrics (from its log.jsonl) to a PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `hin train` run directory")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(handler=_plot)


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="the whole pipeline on the bundled synthetic dataset "
                                         "(what `make demo` runs)",
                            description="The whole pipeline on a synthetic world of coloured "
                                        "shapes: write the data set, train a small HIN with "
                                        "cross-entropy then SCST, evaluate both beside a blind "
                                        "baseline on the test split, caption test pictures from "
                                        "their files and draw where the models look (the paper's "
                                        "Fig. 6 layout). A few minutes on a CPU.")
    p.add_argument("--data", default="data/synth", help="synthetic dataset directory")
    p.add_argument("--runs", default="runs/demo",
                   help="the demo's own folder: its xe/, scst/ and eval/ are replaced on each run")
    p.add_argument("--configs", help="folder with your own synth_xe.yaml and synth_scst.yaml "
                                     "(default: the ones shipped with hin)")
    p.add_argument("--force", action="store_true",
                   help="use a --runs folder that holds other files (only the demo's "
                        "subfolders are replaced; other files are kept)")
    p.set_defaults(handler=_demo)


