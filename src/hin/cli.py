"""The `hin` command: parses arguments and calls the library; no logic of its own lives here."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from hin.errors import HINError, Interrupted, UsageError
from hin.serve.settings import DEFAULT_PIXELS_IN_FLIGHT, SERVE_THREADS

if TYPE_CHECKING:
    from collections.abc import Callable

    from hin.config import DecodingConfig

VOCAB_HELP = ("vocabulary JSON, for checkpoints that record none (imported reference ones); "
              "must equal a recorded one")


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


def _data_synth(args: argparse.Namespace) -> int:
    import time

    from hin.data.synth import generate

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

    paper = HINConfig()
    grid_dim = args.grid_dim or read_attributes(args.grid).get("feature_dim", paper.grid_dim)
    region_dim = args.region_dim or read_attributes(args.region).get("feature_dim",
                                                                     paper.region_dim)
    store = FeatureStore(args.grid, args.region, grid_dim=grid_dim, region_dim=region_dim)
    healthy = True
    for name, split in load_splits(args.annotations, args.split or SPLITS).items():
        problems = store.check(split.image_ids, read_values=not args.shapes_only)
        print(f"[{name}] {split.source}: {len(split.images)} images, "
              f"{sum(len(image.captions) for image in split.images.values())} captions")
        print(problems.summary())
        healthy = healthy and problems.ok
    return 0 if healthy else 1


def _data_vocab(args: argparse.Namespace) -> int:
    from hin.data.coco import load_splits
    from hin.data.vocab import Vocabulary
    from hin.files import refuse_overwriting

    refuse_overwriting(args.out, {"--legacy": args.legacy, "--annotations": args.annotations},
                       "give --out another path")
    if args.legacy:
        vocab = Vocabulary.from_legacy_pickle(args.legacy)
    else:
        splits = load_splits(args.annotations, ["train", "val"])
        captions = splits["train"].captions() + splits["val"].captions()
        vocab = Vocabulary.build(captions, min_freq=args.min_freq, progress=True)
    vocab.save(args.out)
    print(f"wrote {args.out}: {len(vocab)} entries")
    return 0


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    from hin.config import DataConfig, HINConfig

    defaults, model = DataConfig(), HINConfig()
    data = commands.add_parser("data", help="datasets: synthetic set, feature checks, vocabulary")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = actions.add_parser("synth", help="write the synthetic captioning dataset (COCO formats)")
    p.add_argument("--out", required=True, help="directory to write (e.g. data/synth)")
    p.add_argument("--seed", type=int, default=0)
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
    p.set_defaults(handler=_data_check)

    p = actions.add_parser("vocab", help="build the vocabulary from train+val captions, "
                                         "or import the reference's pickle")
    p.add_argument("--out", required=True, help="vocabulary JSON file to write")
    p.add_argument("--annotations", default=defaults.annotations,
                   help="annotation directory or dataset_coco.json")
    p.add_argument("--min-freq", type=int, default=5)
    p.add_argument("--legacy", help="import this legacy vocabulary pickle instead (read safely)")
    p.set_defaults(handler=_data_vocab)


def _score(args: argparse.Namespace) -> int:
    from hin.data.coco import read_coco_references
    from hin.files import refuse_overwriting, write_json
    from hin.metrics import read_coco_results, score_captions

    if args.out:
        refuse_overwriting(args.out, {"--results": args.results,
                                      "--annotations": args.annotations},
                           "give --out another path (the metrics go into a file of their own)")
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
    result = evaluate(args.checkpoint, args.split, data, decoding=_decoding(args),
                      batch_size=args.batch_size, out_dir=args.out, spice=not args.no_spice,
                      device=args.device, vocab=args.vocab, max_regions=args.max_regions)
    for note in result.notes:
        print(f"hin evaluate: note: {note}", file=sys.stderr)
    if result.report is not None:
        print(result.report.format_table())
    else:
        print(f"{len(result.captions)} images captioned; they have no references, so no metrics")
    for path in result.written:
        print(f"wrote {path}")
    return 0


def _add_decoding_options(p: argparse.ArgumentParser, *, num_captions: bool = False) -> None:
    """The decoding flags every command that captions takes (hin.config.DecodingConfig)."""
    from hin.config import PRECISIONS, DecodingConfig

    defaults = DecodingConfig()
    p.add_argument("--beam", type=int, default=defaults.beam_size, help="beam size (paper: 5)")
    p.add_argument("--max-len", type=int, default=defaults.max_len,
                   help="maximum caption length (paper: 20)")
    if num_captions:
        p.add_argument("--top-k", type=int, default=defaults.num_captions,
                       help="captions per picture, best first")
    p.add_argument("--keep-repeats", action="store_true",
                   help='do not collapse immediately repeated words ("a a dog" -> "a dog")')
    p.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                   help="fp32 (exact reference arithmetic), bf16 (the weights cast to bfloat16 "
                        "once), or auto (bf16 where the device runs it fast)")


def _decoding(args: argparse.Namespace) -> DecodingConfig:
    from hin.config import DecodingConfig

    return DecodingConfig(beam_size=args.beam, max_len=args.max_len,
                          num_captions=getattr(args, "top_k", 1),
                          collapse_repeats=not args.keep_repeats, precision=args.precision)


def _extract_pictures(build: Callable[[], object], args: argparse.Namespace) -> int:
    """List the pictures and check the settings, then `build` the extractor (a model load)."""
    from hin.extract import choose_shard, extract_to_file, list_images
    from hin.extract.images import max_pixels

    files = list_images(args.images)
    shard = choose_shard(args.shard)
    max_pixels()
    report = extract_to_file(build(), files, args.out, batch_size=args.batch_size,
                             chunk_size=args.chunk_size, workers=args.workers, shard=shard,
                             orientation=args.orientation)
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


def _extract_merge(args: argparse.Namespace) -> int:
    from hin.extract import merge_shards

    print(merge_shards(args.out, args.shards).summary())
    return 0


def _extract_regions(args: argparse.Namespace) -> int:
    from hin.extract import build_extractor, import_vinvl

    if args.vinvl_tsv:
        if args.shard:
            raise UsageError("--shard spreads extraction from pictures; a VinVL TSV import "
                             "runs whole (drop --shard)")
        report = import_vinvl(args.vinvl_tsv, args.out, args.predictions,
                              dtype=args.store_as or "float16")
        print(report.summary())
        return 0
    options = {"model": args.model, "revision": args.revision, "threshold": args.threshold,
               "max_regions": args.max_regions, "store_as": args.store_as}
    return _extract_pictures(lambda: build_extractor(
        args.extractor, device=_extraction_device(args), precision=args.precision,
        **{k: v for k, v in options.items() if v is not None}), args)


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
                          decoding=_decoding(args), batch_size=args.batch_size,
                          max_regions=args.max_regions)
    for note in captioner.notes:
        print(f"hin caption: note: {note}", file=sys.stderr)
    results = (captioner.caption_pictures(pictures) if pictures
               else captioner.caption_features(args.grid, args.region, args.ids))
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        print("\n".join(str(result) for result in results))
    _say_unfamiliar("caption", [result.unfamiliar for result in results])
    return 0


def _say_unfamiliar(command: str, notes: list) -> None:
    """Once per run, on stderr: how many pictures look unlike the training pictures."""
    from hin.data.familiarity import run_note

    note = run_note(notes)
    if note:
        print(f"hin {command}: {note}", file=sys.stderr)


def _add_extract_commands(commands: argparse._SubParsersAction) -> None:
    from hin.config import DATASET_ORIENTATION, EXTRACTION_PRECISIONS, ORIENTATIONS, STORAGE_DTYPES

    extract = commands.add_parser("extract", help="features from pictures (CLIP grid, DETR "
                                                  "regions) or VinVL TSV import, as HDF5")
    actions = extract.add_subparsers(dest="extract_command", required=True, metavar="ACTION")

    def add_run_options(p: argparse.ArgumentParser, batch_size: int) -> None:
        p.add_argument("--batch-size", type=int, default=batch_size)
        p.add_argument("--chunk-size", type=int, default=512,
                       help="images per atomically written part (a kill loses at most one)")
        p.add_argument("--workers", type=int, default=2, help="picture decoding processes")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1")
        p.add_argument("--precision", default="fp32", choices=EXTRACTION_PRECISIONS,
                       help="fp32 (default: exact, the reference's arithmetic for the released "
                            "CLIP grids), bf16 autocast (fast on CUDA and on CPUs with "
                            "avx512_bf16/AMX), fp16 weights (CUDA only, fast, not the "
                            "reference's), or auto (bf16 where the device runs it fast)")
        p.add_argument("--store-as", choices=STORAGE_DTYPES,
                       help="stored feature dtype: float16 (default, half the disk) or float32 "
                            "(as the reference stored its CLIP grids); the synthetic world's "
                            "extractors store float16 only")
        p.add_argument("--orientation", default=DATASET_ORIENTATION, choices=ORIENTATIONS,
                       help="stored (default: pixels as stored, as the reference's extraction "
                            "and COCO's annotators saw them) or exif (upright by the EXIF tag, "
                            "as hin caption/explain/serve read pictures: for your own photos); "
                            "recorded in the file")
        p.add_argument("--shard", metavar="K/N",
                       help="extract only shard K of N of the pictures (sorted by id) into "
                            "OUT.shard-K-of-N.h5, joined later by `hin extract merge OUT`; "
                            "under torchrun the default is one shard per rank")

    p = actions.add_parser("grid", help="CLIP grid features: <id>_features [256, 1024] and "
                                        "<id>_global [768] (float16, or --store-as float32)")
    p.add_argument("--images", required=True,
                   help="folder of pictures, or a text file listing one path per line")
    p.add_argument("--out", required=True, help="grid HDF5 file (re-running resumes)")
    p.add_argument("--extractor", default="clip-grid",
                   help="registered grid extractor: clip-grid, or synth-grid (the synthetic "
                        "world's pixel cells)")
    p.add_argument("--model", help="CLIP checkpoint: hub name (from the HF cache) or local "
                                   "folder (default openai/clip-vit-large-patch14)")
    add_run_options(p, batch_size=32)
    p.set_defaults(handler=_extract_grid)

    p = actions.add_parser("regions", help="region features: import VinVL TSV, or detect "
                                           "in pictures with a built-in extractor")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--vinvl-tsv", help="VinVL features.tsv (what the paper used)")
    source.add_argument("--images", help="folder of pictures, or a text file of paths")
    p.add_argument("--out", required=True, help="region HDF5 file (re-running resumes)")
    p.add_argument("--predictions", help="VinVL predictions.tsv (boxes, size, confidences)")
    p.add_argument("--extractor", default="detr",
                   help="registered region extractor: detr, or synth-regions (objects = "
                        "connected blobs on a plain background)")
    p.add_argument("--model", help="detector checkpoint (default facebook/detr-resnet-50)")
    p.add_argument("--revision", help="hub revision (default for DETR: no_timm)")
    p.add_argument("--threshold", type=float, help="minimum class probability (default 0.5)")
    p.add_argument("--max-regions", type=int, help="regions kept per picture (default 50)")
    add_run_options(p, batch_size=8)
    p.set_defaults(handler=_extract_regions)

    p = actions.add_parser("merge", help="join the shard files of a --shard K/N extraction into "
                                         "its output, once every shard has finished")
    p.add_argument("out", help="the output file the shards were run with (--out)")
    p.add_argument("shards", nargs="*",
                   help="shard files (default: every OUT.shard-K-of-N.h5 beside OUT)")
    p.set_defaults(handler=_extract_merge)


def _add_caption_commands(commands: argparse._SubParsersAction) -> None:
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
    _add_decoding_options(p, num_captions=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_caption)


def _train(args: argparse.Namespace) -> int:
    from hin.config import RunConfig, apply_overrides, load_yaml
    from hin.training.loop import TrainingError, TrainingInterrupted, resume, start

    if args.resume and args.init:
        raise UsageError("--init starts a new run; a resumed run continues from its last.pt")
    try:
        if args.resume:
            best = resume(args.resume, args.overrides)
        else:
            given = apply_overrides(load_yaml(args.config), args.overrides)
            best = start(RunConfig.from_dict(given), init=args.init,
                         model_keys=list(given.get("model") or {}),
                         data_keys=list(given.get("data") or {}))
    except TrainingInterrupted as stopped:
        print(f"hin train: {stopped}", file=sys.stderr)
        return 130
    except TrainingError as error:
        print(f"hin train: error: {error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":   # under torchrun, one message, not one per process
        print(f"best checkpoint: {best}" if best.exists() else
              f"stopped before the first validation; continue with `hin train --resume {best.parent}`")
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


def _serve(args: argparse.Namespace) -> int:
    from hin.serve import ServeSettings, create_app

    try:
        import uvicorn
    except ImportError as missing:
        from hin.errors import MissingExtraError, pip_install

        raise MissingExtraError(f"`hin serve` needs uvicorn: {pip_install('serve')}") from missing
    settings = ServeSettings(
        args.checkpoint, decoding=_decoding(args), device=args.device, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb,
        keep_uploads=args.keep_uploads, host=args.host, port=args.port,
        allow_hosts=tuple(args.allow_host), allow_origins=tuple(args.allow_origin),
        max_pixels_in_flight=args.max_pixels_in_flight, max_queue=args.max_queue,
        decode_workers=args.decode_workers, body_timeout_s=args.body_timeout)
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.shutdown_timeout <= 0:
        raise UsageError(f"--shutdown-timeout must be positive, got {args.shutdown_timeout}")
    listener = _listen(args.host, args.port)      # before the model loads: a taken port fails fast
    import torch

    torch.set_num_threads(args.threads)
    app = create_app(settings)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"hin serve: warning: listening on {args.host}: anyone who can reach this machine "
              "can use the model (no authentication, no TLS)", file=sys.stderr)
    config = uvicorn.Config(app, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def _listen(host: str, port: int):
    """The server's listening socket, or one line saying why it cannot be had."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r} is not an address of this machine ({error})") from None
    except OSError as error:
        raise UsageError(f"cannot listen on {host} port {port}: {error.strerror}; is another "
                         "server using it? Choose another with --port") from None
    return listener


def _add_serve_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="a page and an HTTP API that caption pictures "
                                          "(batched; binds 127.0.0.1 unless told)")
    p.add_argument("--checkpoint", required=True, help="hin checkpoint (.pt)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; another than loopback exposes the model to the "
                        "network, unauthenticated")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests naming this Host (e.g. the name a proxy uses; "
                        "'*' for any); by default only the bound address and localhost names")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from this origin (e.g. https://example.org; '*' for any) "
                        "POST pictures; by default only the server's own page may")
    p.add_argument("--max-batch", type=int, default=8,
                   help="most concurrent requests captioned in one model call")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="longest a request waits for others to batch with")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="larger uploads are refused with 413")
    p.add_argument("--max-pixels-in-flight", type=int, default=DEFAULT_PIXELS_IN_FLIGHT,
                   metavar="PIXELS",
                   help="most pixels of pictures decoded at once (memory follows pixels, "
                        "about 13 bytes each at the peak); beyond it 503 with Retry-After")
    p.add_argument("--max-queue", type=int, default=64,
                   help="most requests in progress at once; beyond it 429 with Retry-After")
    p.add_argument("--decode-workers", type=int, default=2,
                   help="threads that decode and prepare pictures, off the batching thread")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a request body that takes longer to arrive is refused with 408")
    p.add_argument("--shutdown-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM/Ctrl-C, requests still running after this are cut off")
    p.add_argument("--keep-uploads", metavar="DIR",
                   help="write every decoded upload to DIR (named by its sha256); by default "
                        "uploads never touch the disk")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1")
    p.add_argument("--threads", type=int, default=SERVE_THREADS,
                   help=f"CPU threads for inference (torch.set_num_threads; default "
                        f"{SERVE_THREADS}, the fastest measured: see docs/serving.md)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning",
                                                           "info", "debug"])
    _add_decoding_options(p, num_captions=True)
    p.set_defaults(handler=_serve)


def _explain(args: argparse.Namespace) -> int:
    from hin.caption import picture_paths
    from hin.explain import PAPER_FILE, explain, write_figures

    checkpoints = ([args.checkpoint] if args.checkpoint else []) + (args.compare or [])
    if not checkpoints:
        raise UsageError("give --checkpoint CKPT (and --compare CKPT2 for a second column), or "
                         "--compare BASE.pt OURS.pt")
    if args.paper and len(checkpoints) != 2:
        raise UsageError(f"--paper compares two models, got {len(checkpoints)} checkpoints: give "
                         "--compare BASE.pt OURS.pt (or --checkpoint OURS.pt --compare BASE.pt)")
    explanations = explain(
        checkpoints, pictures=picture_paths(args.pictures), ids=args.ids, grid=args.grid, region=args.region,
        images=args.images, annotations=args.annotations, split=args.split, limit=args.limit,
        layer=args.layer, words=args.words, labels=args.labels, decoding=_decoding(args),
        device=args.device, batch_size=args.batch_size)
    layer_label = "mean over layers" if args.layer is None else f"layer {args.layer}"
    paths = write_figures(explanations, args.out, layer_label, paper=args.paper)
    for explanation, path in zip(explanations, paths):
        scores = [f"{v.label}: {v.caption}" + ("" if v.cider is None else f" (CIDEr-D x100 {100 * v.cider:.1f})")
                  for v in explanation.views]
        print(f"{path}  {explanation.name}: " + " | ".join(scores))
    paper = f", {args.out}/{PAPER_FILE}.png and .pdf" if args.paper else ""
    print(f"wrote {len(paths)} figures{paper} and {args.out}/index.html")
    _say_unfamiliar("explain", [e.unfamiliar for e in explanations])
    return 0


def _layer(value: str) -> int | None:
    if value == "mean":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer takes a layer number (1 = first) or 'mean', got {value!r}") from None


def _add_explain_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("explain", help="figures of where the model looks (attention maps) "
                                            "beside its captions, and an index.html")
    p.add_argument("pictures", nargs="*", help="picture files or folders of them (the checkpoint's "
                                               "recorded extractors are re-run on them)")
    p.add_argument("--checkpoint", help="hin checkpoint (the first column)")
    p.add_argument("--compare", metavar="CKPT", nargs="+",
                   help="checkpoints drawn in further columns: one beside --checkpoint, or two "
                        "without it (--compare BASE.pt OURS.pt, as the paper's figure)")
    p.add_argument("--labels", nargs="+", metavar="NAME",
                   help="column titles, one per checkpoint (default: the checkpoints' folder names)")
    p.add_argument("--paper", action="store_true",
                   help="also draw all images as one table in the paper's layout (Fig. 6: image | "
                        "grid maps | region maps | captions, differing words in red) to "
                        "OUT/paper_figure.png and .pdf; needs two checkpoints")
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
    _add_decoding_options(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1")
    p.set_defaults(handler=_explain)


def _add_import_checkpoint_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("import-checkpoint",
                            help="convert a reference HIN checkpoint (.pth) into hin's format")
    p.add_argument("reference", help="reference checkpoint: a state_dict or {'state_dict': ...}")
    p.add_argument("out", help="where to write the hin checkpoint (.pt)")
    p.add_argument("--heads", type=int, required=True,
                   help="attention heads: tensor shapes cannot tell (the paper's models: 8)")
    p.add_argument("--force", action="store_true", help="allow OUT to be the reference file")
    p.set_defaults(handler=_import_checkpoint)


def _add_score_commands(commands: argparse._SubParsersAction) -> None:
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


def _add_evaluate_commands(commands: argparse._SubParsersAction) -> None:
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
    _add_decoding_options(p)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", default="runs/evaluate", help="directory for the two JSON files")
    p.add_argument("--annotations", default=data.annotations,
                   help="annotation directory (COCO json + Karpathy .npy) or dataset_coco.json")
    p.add_argument("--grid", default=data.grid_features, help="grid feature HDF5 file")
    p.add_argument("--region", default=data.region_features, help="region feature HDF5 file")
    p.add_argument("--vocab", help=VOCAB_HELP)
    p.add_argument("--max-regions", type=int,
                   help="regions per image (default: as many as the checkpoint was trained with)")
    p.add_argument("--workers", type=int, default=data.num_workers, help="data loader workers")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1")
    p.add_argument("--no-spice", action="store_true", help="skip SPICE (slow)")
    p.set_defaults(handler=_evaluate)


def _add_train_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train HIN: cross-entropy, or SCST from an XE "
                                          "checkpoint; resumable, one process or torchrun")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML run configuration: a path, or the name of a "
                                          "shipped one (synth_xe, synth_scst, coco_xe, coco_scst, "
                                          "small_xe, small_scst for your own small data set)")
    source.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    p.add_argument("--init", help="start from this hin checkpoint's weights (SCST from XE best.pt)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.batch_size=20 run_dir=runs/try")
    p.set_defaults(handler=_train)


def _add_plot_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("plot", help="draw a run's loss, learning rate and validation "
                                         "metrics (from its log.jsonl) to a PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `hin train` run directory")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(handler=_plot)


def _add_demo_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="the whole pipeline on the bundled synthetic dataset "
                                         "(what `make demo` runs)")
    p.add_argument("--data", default="data/synth", help="synthetic dataset directory")
    p.add_argument("--runs", default="runs/demo",
                   help="the demo's own folder: its xe/, scst/ and eval/ are replaced on each run")
    p.add_argument("--configs", help="folder with your own synth_xe.yaml and synth_scst.yaml "
                                     "(default: the ones shipped with hin)")
    p.add_argument("--force", action="store_true",
                   help="use a --runs folder that holds other files (only the demo's "
                        "subfolders are replaced; other files are kept)")
    p.set_defaults(handler=_demo)


class _Version(argparse.Action):
    """`hin --version`: torch is imported only when asked, so `hin --help` stays fast."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from hin.devices import version_report

        print(version_report())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hin", description="HIN image captioning: data, training, evaluation, feature "
                                "extraction and captioning. `hin COMMAND --help` for details.")
    parser.add_argument("--version", action=_Version, help="print hin's version, torch's and the "
                                                          "CPU/GPU it sees, and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In the order a user meets them: try it, get data, train, evaluate, use, then the tools.
    for add in (_add_demo_commands, _add_data_commands, _add_train_commands, _add_evaluate_commands,
                _add_caption_commands, _add_explain_commands, _add_serve_commands, _add_extract_commands,
                _add_import_checkpoint_commands, _add_score_commands, _add_plot_commands):
        add(commands)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    with contextlib.suppress(ValueError):   # not the main thread: leave signals alone
        # SIGTERM unwinds like Ctrl-C, so every command cleans up (temporary files, workers,
        # Java children) and ends with one line instead of dying silently with 143.
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.handler(args)
    except Interrupted as stopped:
        print(f"hin {args.command}: {stopped}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"hin {args.command}: interrupted", file=sys.stderr)
        return 130
    except (HINError, OSError) as error:
        # What the user gave us is wrong (or a path of theirs cannot be used): one line.
        # Anything else is a bug in hin and keeps its traceback.
        print(f"hin {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
