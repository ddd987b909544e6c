"""Options and messages that several `hin` commands share, written once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hin.errors import UsageError

if TYPE_CHECKING:
    from hin.config import DecodingConfig

VOCAB_HELP = ("vocabulary (hin's vocab.json or the reference's vocab.pkl), for checkpoints "
              "that record none (imported without --vocab); must equal a recorded one")


def add_checkpoint_inputs(p: argparse.ArgumentParser) -> None:
    """What a command that decodes may add to what its checkpoints record."""
    p.add_argument("--vocab", help=VOCAB_HELP)
    p.add_argument("--extractor-weights", action="append", default=[], metavar="KIND=PATH",
                   help="the weights file of the checkpoint's recorded grid or region "
                        "extractor, where it is not where the checkpoint records it "
                        "(e.g. region=/data/vinvl_vg_x152c4.pth)")


def extractor_weights(args: argparse.Namespace) -> dict[str, str]:
    """--extractor-weights KIND=PATH ... -> {kind: path}."""
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
        if extras and self.prog != "hin" and not late_overrides(parsed, extras):
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def late_overrides(parsed: argparse.Namespace, extras: list[str]) -> bool:
    """`key=value` overrides after an option (`hin train --init CKPT train.max_steps=2`) of a
    command that takes overrides: `hin.cli.parse` adds them to the others."""
    return hasattr(parsed, "overrides") and all(
        "=" in text and not text.startswith("-") for text in extras)


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1")


class _Typed(argparse.Action):
    """Stores a decoding flag's value and remembers the flag as typed (`--beam` or
    `--beam-size`), so that an error names what the user wrote; a deprecated flag prints
    its note once."""

    def __init__(self, option_strings: list[str], dest: str, note: str = "", **kwargs: Any) -> None:
        self.note = note
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        typed = dict(getattr(namespace, "typed_flags", {}))
        typed[self.dest] = option_string
        namespace.typed_flags = typed
        if self.note:
            print(f"hin: {option_string} {self.note}", file=sys.stderr)


def add_decoding_options(p: argparse.ArgumentParser, *, num_captions: bool = False) -> None:
    """The decoding flags every command that captions takes, made from DecodingConfig's table
    (hin.config.Setting): flag names are field names (`--num-captions`), plus the aliases
    and this release's deprecated flags the table lists."""
    from hin.config import DecodingConfig, decoding_settings, setting_type

    defaults = DecodingConfig()
    group = p.add_argument_group("decoding (docs/evaluation.md, Decoding options)")
    for name, setting in decoding_settings().items():
        if name == "num_captions" and not num_captions:
            continue
        kind, default = setting_type(name), getattr(defaults, name)
        help_text = setting_help(setting.help, lambda other: decoding_settings()[other].flags(other)[0])
        if setting.mode != "both":
            help_text = f"{'sampling' if setting.mode == 'sampling' else 'beam search'}: {help_text}"
        if kind is bool:     # a switch turns the default over: --sample, --keep-repeats
            group.add_argument(*setting.flags(name), dest=name, action=_Typed, nargs=0,
                               const=not default, default=default,
                               help=help_text if not default else f"turns off: {help_text}")
        else:
            group.add_argument(*setting.flags(name), dest=name, action=_Typed, type=kind,
                               default=default, choices=setting.choices or None,
                               metavar=setting.metavar, help=f"{help_text} (default {default})")
        for flag in setting.deprecated:
            group.add_argument(flag, dest=name, action=_Typed, type=kind, help=argparse.SUPPRESS,
                               note=f"is deprecated and will change its meaning in the next "
                                    f"release: use {setting.flags(name)[0]}")


def setting_help(text: str, name_of: Callable[[str], str]) -> str:
    """A Setting's help with the settings it names (`{field}`) named `name_of(field)`."""
    from hin.config import decoding_settings

    return text.format(**{name: name_of(name) for name in decoding_settings()})


def decoding(args: argparse.Namespace) -> DecodingConfig:
    """The DecodingConfig the decoding flags give; a refusal names the flags as typed."""
    from hin.config import DecodingConfig, SettingError, decoding_settings

    typed = getattr(args, "typed_flags", {})
    try:
        return DecodingConfig(**{name: getattr(args, name) for name in decoding_settings()
                                 if hasattr(args, name)})
    except SettingError as error:
        raise UsageError(error.naming(
            lambda name: typed.get(name) or decoding_settings()[name].flags(name)[0])) from error


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
