"""DecodingConfig: every setting of caption decoding, and its table (`Setting`, one per field:
help, range, mode, flags) from which the `hin` flags, `hin serve`'s HTTP options and its
OpenAPI schema are made, and by which the values are checked.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import Any

from hin.config.base import MAX_SEED, PRECISIONS, ConfigError, _finite_number
from hin.config.files import from_dict


class SettingError(ConfigError):
    """A decoding setting that cannot be used. The message names settings as `{field}` (and
    their values as `{field_value}`), so that each surface names them as its users wrote
    them: `naming` renders it with flags for `hin`, option names for HTTP; `str()` says
    `DecodingConfig.field` (the Python API)."""

    def __init__(self, template: str, config: Any) -> None:
        self.template = template
        self.values = {f.name: getattr(config, f.name) for f in fields(config)}
        super().__init__(self.naming(lambda name: f"DecodingConfig.{name}"))

    def naming(self, name_of: Any) -> str:
        """The message with each setting named `name_of(field)`."""
        return self.template.format(**{name: name_of(name) for name in self.values},
                                    **{f"{name}_value": value for name, value in self.values.items()})


MODES = ("search", "sampling", "both")


@dataclass(frozen=True)
class Setting:
    """How one decoding setting is offered to people: the one table every surface reads. The
    `hin` flags (hin.cli.options), `hin serve`'s HTTP options (hin.serve.inputs) and its
    OpenAPI schema (hin.serve.schema) are made from it, and DecodingConfig checks its values
    by it. `help` names other settings as `{field}`; each surface names them its own way."""

    help: str
    mode: str = "both"                 # what it applies to: search, sampling or both
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None         # an exclusive minimum
    choices: tuple[str, ...] = ()
    flag: str = ""                     # the flag, when it is not --field-name
    aliases: tuple[str, ...] = ()      # more flags with the same meaning
    deprecated: tuple[str, ...] = ()   # flags accepted this release with a note, then gone
    http: bool = True                  # an option of hin serve's POST /v1/captions
    metavar: str | None = None
    example: Any = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"a decoding setting's mode is one of {MODES}, got {self.mode!r}")

    def flags(self, name: str) -> list[str]:
        return [self.flag or "--" + name.replace("_", "-"), *self.aliases]



def _setting(default: Any, help: str, **described: Any) -> Any:
    return dataclasses.field(default=default, metadata={"setting": Setting(help, **described)})


@dataclass(frozen=True)
class DecodingConfig:
    """Every setting of caption decoding, built once and handed to whoever decodes
    (`Captioner`, `hin evaluate`, validation during training, the server); each field's
    `Setting` (its help, range and mode) is the one table of what people may set.

    `precision` `bf16` decodes with the weights cast to bfloat16 once
    (`hin.decoding.Ensemble.cast`). Every default keeps the reference's rule; how words are
    chosen under each setting is hin.decoding.search's.
    """

    beam_size: int = _setting(5, "hypotheses kept at each step (paper: 5)", mode="search",
                              minimum=1, aliases=("--beam",), example=5)
    max_len: int = _setting(20, "maximum caption length in words (paper: 20)", minimum=1,
                            http=False)
    num_captions: int = _setting(
        1, "captions per picture, best first (beam search: at most {beam_size}, or "
           "{diversity_groups} with diverse groups)", minimum=1, deprecated=("--top-k",),
        example=3)
    collapse_repeats: bool = _setting(
        True, 'immediately repeated words collapsed before captions are shown or scored ("a '
              'a dog" -> "a dog"), as the reference\'s evaluation did', flag="--keep-repeats",
        http=False)
    precision: str = _setting("fp32", "fp32 (exact reference arithmetic), bf16 (the weights "
                                      "cast to bfloat16 once), or auto (bf16 where the device "
                                      "runs it fast)", choices=PRECISIONS, http=False)
    length_penalty: float = _setting(
        0.0, "rank captions by log-prob / length^ALPHA (0, the reference: by log-prob)",
        metavar="ALPHA", example=0.6)
    min_len: int = _setting(0, "words at least before a caption may end", minimum=0, example=5)
    no_repeat_ngram: int = _setting(0, "no N words twice in a caption in the same order (0: off)",
                                    minimum=0, metavar="N", example=2)
    sample: bool = _setting(False, "draw captions from the model's distribution instead of "
                                   "searching ({beam_size} is then unused)", mode="sampling")
    temperature: float = _setting(1.0, "above 0; below 1 sharpens the distribution",
                                  mode="sampling", above=0, example=0.7)
    top_k: int = _setting(0, "draw from the K most probable words only (0: all)", mode="sampling",
                          minimum=0, flag="--sample-top-k", metavar="K", example=10)
    top_p: float = _setting(1.0, "draw from the most probable words holding P of the mass, in "
                                 "(0, 1]", mode="sampling", above=0, maximum=1, metavar="P", example=0.9)
    seed: int | None = _setting(None, "the same seed gives the same captions", mode="sampling",
                                minimum=0, maximum=MAX_SEED - 1, example=7)
    diversity_groups: int = _setting(
        1, "G diverse groups of beams (G divides {beam_size}), one caption each",
        mode="search", minimum=1, metavar="G", example=3)
    diversity_strength: float = _setting(
        0.5, "diverse groups: the penalty for a word an earlier group chose at the same step",
        mode="search", minimum=0, metavar="LAMBDA", example=2.0)

    def __post_init__(self) -> None:
        for name, setting in settings_of(type(self)).items():
            _check_setting(self, name, setting)
        if self.min_len >= self.max_len:
            raise SettingError("{min_len} ({min_len_value}) must be below {max_len} "
                               "({max_len_value}), so that a caption can end", self)
        if self.beam_size % self.diversity_groups:
            raise SettingError("{diversity_groups} ({diversity_groups_value}) must divide the "
                               "beam size ({beam_size_value}): give {beam_size} a multiple of it",
                               self)
        if self.sample and self.diversity_groups > 1:
            raise SettingError("sampling has no beam to split: give {diversity_groups} 1 with "
                               "{sample}", self)
        if not self.sample and self.num_captions > self.beam_size:
            raise SettingError("{num_captions} ({num_captions_value}) cannot exceed {beam_size} "
                               "({beam_size_value}): beam search keeps that many hypotheses", self)
        if not self.sample and self.num_captions > self.diversity_groups > 1:
            raise SettingError("{num_captions} ({num_captions_value}) cannot exceed "
                               "{diversity_groups} ({diversity_groups_value}): one caption per "
                               "group", self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecodingConfig:
        return from_dict(cls, values)


def settings_of(config_class: type[DecodingConfig]) -> dict[str, Setting]:
    """The table of `config_class` (DecodingConfig or one extending it): each field's
    `Setting`, in field order. Surfaces read it as hin.config.decoding_settings()."""
    return {f.name: f.metadata["setting"] for f in fields(config_class)}


_TYPE_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(config_class: type[DecodingConfig]) -> dict[str, Any]:
    """A class's resolved field types, resolved once: every DecodingConfig built (one or two a
    served request) checks each field's type."""
    if config_class not in _TYPE_HINTS:
        _TYPE_HINTS[config_class] = typing.get_type_hints(config_class)
    return _TYPE_HINTS[config_class]


def type_of(config_class: type[DecodingConfig], name: str) -> type:
    """The Python type of a decoding setting's values: int, float, bool or str."""
    hint = _type_hints(config_class)[name]
    kinds: tuple[type, ...] = typing.get_args(hint) or (hint,)
    return next(kind for kind in kinds if kind is not type(None))


def describe_range(setting: Setting, kind: type) -> str:
    """`a positive integer`, `a number above 0`, `in (0, 1]`, ...: what a setting accepts."""
    if kind is bool:
        return "true or false"
    if setting.choices:
        return f"one of {', '.join(setting.choices)}"
    if kind is int:
        if setting.maximum is not None:
            return f"an integer from {setting.minimum} to {setting.maximum}"
        return "a positive integer" if setting.minimum == 1 else "a non-negative integer"
    if setting.above is not None:
        return (f"in ({setting.above:g}, {setting.maximum:g}]" if setting.maximum is not None
                else f"a number above {setting.above:g}")
    return "a number" if setting.minimum is None else f"a number >= {setting.minimum:g}"


def _check_setting(config: DecodingConfig, name: str, setting: Setting) -> None:
    value, kind = getattr(config, name), type_of(type(config), name)
    unset_by_default = type(config).__dataclass_fields__[name].default is None
    if value is None and unset_by_default:
        return      # unset where unset is the default (the seed)
    if kind is bool:
        good = isinstance(value, bool)
    elif kind is str:
        good = value in setting.choices
    else:
        good = (isinstance(value, int) if kind is int else _finite_number(value)) \
            and not isinstance(value, bool) \
            and (setting.minimum is None or value >= setting.minimum) \
            and (setting.maximum is None or value <= setting.maximum) \
            and (setting.above is None or value > setting.above)
    if not good:
        unset = " (or unset)" if unset_by_default else ""
        raise SettingError(f"{{{name}}} must be {describe_range(setting, kind)}{unset}, got "
                           f"{{{name}_value!r}}", config)
