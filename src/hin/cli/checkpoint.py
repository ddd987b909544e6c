"""`hin import-checkpoint`: a reference checkpoint in hin's format, with what it needs to be
used everywhere: its vocabulary, the extractors its features came from, its head count
(read from the file's saved arguments where it has them, else given and checkable)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _import_checkpoint(args: argparse.Namespace) -> int:
    from hin.checkpoint import import_reference, read_with_digest, save
    from hin.checkpoint.record import REFERENCE, CheckpointRecord
    from hin.checkpoint.verify import check_heads, reference_captions, require_heads, saved_heads
    from hin.data.vocab import Vocabulary
    from hin.errors import UsageError
    from hin.files import refuse_overwriting

    if not args.force:
        refuse_overwriting(args.out, {"the reference checkpoint": args.reference},
                           "give another output path (or --force to replace it)")
    if args.verify and not args.vocab:
        raise UsageError("--verify reads the reference's captions as words: give the vocabulary "
                         "they were decoded with (--vocab vocab.pkl)")
    payload, digest = read_with_digest(args.reference)
    saved = saved_heads(payload)
    heads, heads_from = _heads(args.heads, saved, args.reference, verified=bool(args.verify))
    model = import_reference(payload, num_heads=heads)
    config = model.config
    vocab = Vocabulary.read(args.vocab) if args.vocab else None
    if vocab is not None and len(vocab) != config.vocab_size:
        raise UsageError(f"--vocab {args.vocab} has {len(vocab)} words but {args.reference} was "
                         f"trained with {config.vocab_size}: give the vocabulary it was trained with")
    features, layout = _extractors(args, config)
    if args.verify and vocab is not None:
        grid, region, captions = args.verify
        check = check_heads(lambda count: model if count == heads else import_reference(payload, num_heads=count),
                            config,
                            vocab, grid, region, reference_captions(captions), args.verify_beam)
        print(require_heads(check, args.reference))
        heads_from = f"{heads_from}, verified against the reference's captions"
    record = CheckpointRecord(
        origin=REFERENCE, vocabulary=vocab.to_dict() if vocab else None, features=features,
        layout=layout, source={"file": str(args.reference), "sha256": digest, "heads": heads,
                               "heads_from": heads_from})
    save(args.out, model, record)
    words = ("its words embedded" if vocab else
             "no words: commands that decode need --vocab, or import again with --vocab")
    recorded = "".join(f"; {kind} extractor {values['extractor']}" for kind, values in features.items())
    print(f"wrote {args.out} ({config.num_layers} layers, d_model {config.d_model}, "
          f"vocab {config.vocab_size}, {heads} heads from {heads_from}; {words}{recorded})")
    return 0


def _heads(given: int | None, saved: int | None, reference: str, verified: bool) -> tuple[int, str]:
    """The head count and where it came from; a given count the file cannot confirm is
    trusted with a loud warning (shapes cannot tell 4 heads from 8)."""
    from hin.errors import UsageError

    if saved is not None:
        if given is not None and given != saved:
            raise UsageError(f"--heads {given} contradicts the {saved} heads {reference}'s saved "
                             f"training arguments record: leave out --heads")
        return saved, "the reference's saved arguments"
    if given is None:
        raise UsageError(f"{reference} does not record its head count (tensor shapes cannot tell "
                         "it): give --heads (the paper's models: 8)")
    if not verified:
        print(f"hin import-checkpoint: warning: {reference} does not record its head count, so "
              f"--heads {given} is trusted: a wrong count gives a wrong model without any error. "
              "Check it with --verify GRID REGION CAPTIONS (the reference's captions of a few "
              "images)", file=sys.stderr)
    return given, "--heads"


def _extractors(args: argparse.Namespace, config: Any) -> tuple[dict[str, dict[str, Any]],
                                                               dict[str, dict[str, int]]]:
    """The recorded extractors (built once to record exactly their attributes) and the
    feature layout the model reads."""
    from hin.errors import UsageError

    features: dict[str, dict[str, Any]] = {}
    layout = {"grid": {"dim": config.grid_dim}, "region": {"dim": config.region_dim}}
    for kind, spec in (("grid", args.grid_extractor), ("region", args.region_extractor)):
        if not spec:
            continue
        from hin.extract import extractor_record

        attributes, dim = extractor_record(kind, spec)
        expected = getattr(config, f"{kind}_dim")
        if dim != expected:
            raise UsageError(f"--{kind}-extractor {spec[0]} makes {kind} features of size {dim}, "
                             f"but {args.reference} reads {expected}: record the extractor its "
                             "features came from")
        features[kind] = attributes
        if kind == "grid" and "tokens" in attributes:
            layout["grid"]["tokens"] = int(attributes["tokens"])
    return features, layout


def add_import_checkpoint_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("import-checkpoint",
                            help="convert a reference HIN checkpoint (.pth) into hin's format")
    p.add_argument("reference", help="reference checkpoint: a state_dict or {'state_dict': ...}")
    p.add_argument("out", help="where to write the hin checkpoint (.pt)")
    p.add_argument("--heads", type=int,
                   help="attention heads, when the file's saved arguments do not record them: "
                        "tensor shapes cannot tell, and a wrong count gives a wrong model "
                        "without an error (the paper's models: 8); check it with --verify")
    p.add_argument("--vocab", help="the vocabulary it was trained with, embedded in OUT: the "
                                   "reference's vocab.pkl or a hin vocab.json")
    p.add_argument("--grid-extractor", nargs="+", metavar="NAME_OR_OPTION",
                   help="record the grid extractor its features came from: a registered name "
                        "and KEY=VALUE build options (the authors' CLIP: clip-grid "
                        "model=openai/clip-vit-large-patch14 store_as=float32)")
    p.add_argument("--region-extractor", nargs="+", metavar="NAME_OR_OPTION",
                   help="record the region extractor likewise (the authors' VinVL: vinvl-x152c4 "
                        "weights=vinvl_vg_x152c4.pth nms_filter=1)")
    p.add_argument("--verify", nargs=3, metavar=("GRID", "REGION", "CAPTIONS"),
                   help="check --heads before writing, against the reference's own captions "
                        "(CAPTIONS: its COCO results JSON) of images in the GRID and REGION "
                        "feature files; needs --vocab")
    p.add_argument("--verify-beam", type=int, default=5, metavar="N",
                   help="the beam size the reference's CAPTIONS were decoded with (its "
                        "evaluation: 5)")
    p.add_argument("--force", action="store_true", help="allow OUT to be the reference file")
    p.set_defaults(handler=_import_checkpoint)
