"""Options and messages that several `hin` commands share, written once."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from hin.errors import UsageError

if TYPE_CHECKING:
    from hin.config import DecodingConfig

VOCAB_HELP = ("vocabulary (hin's vocab.json or the reference's vocab.pkl), for checkpoints "
              "that record none (imported without --vocab); must equal a recorded one")


def add_checkpoint_inputs(p: argparse.ArgumentParser, *, vocab: bool = True) -> None:
    """What a command that decodes may add to what its checkpoints record."""
    if vocab:
        p.add_argument("--vocab", help=VOCAB_HELP)
    p.add_argument("--extractor-weights", action="append", default=[], metavar="KIND=PATH",
                   help="the weights file of the checkpoint's recorded grid or region "
                        "extractor, where it is not where the checkpoint records it "
                        "(e.g. region=/data/vinvl_vg_x152c4.pth)")


def extractor_weights(args: argparse.Namespace) -> dict[str, str]:
    """--extractor-weights KIND=PATH ... -> {kind: path}."""
    from hin.errors import UsageError

    weights = {}
    for value in args.extractor_weights:
        kind, equals, path = value.partition("=")
        if not equals or kind not in ("grid", "region") or not path:
            raise UsageError(f"--extractor-weights takes grid=PATH or region=PATH, got {value!r}")
        weights[kind] = path
    return weights


class HelpFormatter(argparse.HelpFormatter):
    """Every command's help shows each option's default, unless its text already speaks of one
    or there is none to show (None, False, a list left empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or any(default is none for none in (None, False, argparse.SUPPRESS))
                or default == []
                or "default" in text.lower() or "%(default)" in text):
            return action.help
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """hin's parsers: every one uses HelpFormatter (a subcommand passing its own formatter
    class keeps it), and an unknown option after a subcommand is reported with that
    subcommand's usage, not the top-level one."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.prog != "hin":
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1")


def add_decoding_options(p: argparse.ArgumentParser, *, num_captions: bool = False) -> None:
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
    choice = p.add_argument_group("how words are chosen (docs/evaluation.md, Decoding options)")
    choice.add_argument("--length-penalty", type=float, default=defaults.length_penalty,
                        metavar="ALPHA", help="rank captions by log-prob / length^ALPHA "
                                              "(0, the reference: by log-prob)")
    choice.add_argument("--min-len", type=int, default=defaults.min_len,
                        help="words at least before a caption may end")
    choice.add_argument("--no-repeat-ngram", type=int, default=defaults.no_repeat_ngram,
                        metavar="N", help="no N words twice in a caption in the same order "
                                          "(0: off)")
    choice.add_argument("--diversity-groups", type=int, default=defaults.diversity_groups,
                        metavar="G", help="diverse beam search: G groups of beams (G divides "
                                          "--beam), one caption each")
    choice.add_argument("--diversity-strength", type=float, default=defaults.diversity_strength,
                        metavar="LAMBDA", help="diverse beam search: the penalty for a word an "
                                               "earlier group chose at the same step")
    choice.add_argument("--sample", action="store_true",
                        help="draw captions from the model's distribution instead of beam "
                             "search (--beam is then unused)")
    choice.add_argument("--temperature", type=float, default=defaults.temperature,
                        help="sampling: above 0; below 1 sharpens the distribution")
    choice.add_argument("--sample-top-k", type=int, default=defaults.top_k, metavar="K",
                        help="sampling: from the K most probable words only (0: all)")
    choice.add_argument("--top-p", type=float, default=defaults.top_p, metavar="P",
                        help="sampling: from the most probable words holding P of the mass, "
                             "in (0, 1]")
    choice.add_argument("--seed", type=int, default=defaults.seed,
                        help="sampling: the same seed gives the same captions")


def decoding(args: argparse.Namespace) -> DecodingConfig:
    from hin.config import DecodingConfig

    return DecodingConfig(beam_size=args.beam, max_len=args.max_len,
                          num_captions=getattr(args, "top_k", 1),
                          collapse_repeats=not args.keep_repeats, precision=args.precision,
                          length_penalty=args.length_penalty, min_len=args.min_len,
                          no_repeat_ngram=args.no_repeat_ngram,
                          diversity_groups=args.diversity_groups,
                          diversity_strength=args.diversity_strength, sample=args.sample,
                          temperature=args.temperature, top_k=args.sample_top_k,
                          top_p=args.top_p, seed=args.seed)


def say_unfamiliar(command: str, notes: list) -> None:
    """Once per run, on stderr: how many pictures look unlike the training pictures."""
    from hin.data.familiarity import run_note

    note = run_note(notes)
    if note:
        print(f"hin {command}: {note}", file=sys.stderr)


def add_checkpoint_option(p: argparse.ArgumentParser, required: bool, help: str) -> None:
    """`--checkpoint` for a command that decodes with one checkpoint: given twice, it is refused
    by `one_checkpoint` (argparse alone would keep the last silently)."""
    p.add_argument("--checkpoint", action="append", required=required, help=help)


def one_checkpoint(args: argparse.Namespace, instead: str) -> list[str]:
    """The --checkpoint given, as a list of at most one, or a UsageError when it is repeated,
    saying what to do `instead` (only `hin evaluate` ensembles checkpoints)."""
    given: list[str] = args.checkpoint or []
    if len(given) > 1:
        raise UsageError(f"--checkpoint is given {len(given)} times ({', '.join(given)}); hin "
                         f"{args.command} uses one checkpoint: {instead}")
    return given
