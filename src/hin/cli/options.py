"""Options and messages that several `hin` commands share, written once."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hin.config import DecodingConfig

VOCAB_HELP = ("vocabulary JSON, for checkpoints that record none (imported reference ones); "
              "must equal a recorded one")


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


def decoding(args: argparse.Namespace) -> DecodingConfig:
    from hin.config import DecodingConfig

    return DecodingConfig(beam_size=args.beam, max_len=args.max_len,
                          num_captions=getattr(args, "top_k", 1),
                          collapse_repeats=not args.keep_repeats, precision=args.precision)


def say_unfamiliar(command: str, notes: list) -> None:
    """Once per run, on stderr: how many pictures look unlike the training pictures."""
    from hin.data.familiarity import run_note

    note = run_note(notes)
    if note:
        print(f"hin {command}: {note}", file=sys.stderr)
