"""Typed configuration: dataclasses, YAML files and `key=value` command-line overrides.

Every run and checkpoint stores its resolved configuration as a plain dict produced here,
so a saved model can always be rebuilt without the files it was trained from. One job: every
setting's name, type, default and check, and where older hin versions' settings live now
(`upgrade_legacy`), in one place.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from hin.errors import HINError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Settings = TypeVar("Settings", bound="DataclassInstance")

POSITION_TABLES = ("frozen-random", "sinusoid")


class _YAMLLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; learning rates are written that way.
    A key given twice in one mapping (e.g. a section repeated) is an error, not "last wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {first_line[key]}); "
                    "keep one", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


class ConfigError(HINError, ValueError):
    """A configuration value or key that cannot be used, with what would be accepted."""


def require_positive_ints(config: Any, *names: str, least: int = 1) -> None:
    """Each named field an int (not a bool) of at least `least` (1, or 0 for a count)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            what = "a positive integer" if least else "a non-negative integer"
            raise ConfigError(f"{type(config).__name__}.{name} must be {what}, got {value!r}")


def require_non_negative_ints(config: Any, *names: str) -> None:
    require_positive_ints(config, *names, least=0)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


MAX_SEED = 2**63   # torch.Generator.manual_seed takes seeds below this


@dataclass(frozen=True)
class HINConfig:
    """Architecture of one HIN model (docs/model.md §1–6). Defaults are the paper's."""

    vocab_size: int = 10201
    num_layers: int = 3
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    dropout: float = 0.1
    max_positions: int = 54
    grid_dim: int = 1024
    region_dim: int = 2048
    unk_id: int = 0
    pad_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    position_table: str = "frozen-random"

    def __post_init__(self) -> None:
        require_positive_ints(self, "vocab_size", "num_layers", "d_model", "num_heads", "d_ff",
                              "max_positions", "grid_dim", "region_dim")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"HINConfig.d_model ({self.d_model}) must be divisible by num_heads "
                f"({self.num_heads}); e.g. d_model=512 with 8 heads gives 64 per head")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"HINConfig.dropout must be in [0, 1), got {self.dropout!r}")
        specials = {"unk_id": self.unk_id, "pad_id": self.pad_id, "bos_id": self.bos_id,
                    "eos_id": self.eos_id}
        for name, value in specials.items():
            if not 0 <= value < self.vocab_size:
                raise ConfigError(
                    f"HINConfig.{name}={value} is outside the vocabulary (size {self.vocab_size})")
        if len(set(specials.values())) != len(specials):
            raise ConfigError(f"HINConfig special token ids must be distinct, got {specials}")
        if self.position_table not in POSITION_TABLES:
            raise ConfigError(
                f"HINConfig.position_table must be one of {POSITION_TABLES}, "
                f"got {self.position_table!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HINConfig:
        return from_dict(cls, values)


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _checked(hint: Any, value: Any, key: str) -> Any:
    """`value` if it has the declared type `hint` (ints are accepted as floats), else an error
    naming the key, the value and what was expected."""
    if hint not in _EXPECTED:
        return value
    accepted = (int, float) if hint is float else hint
    if isinstance(value, bool) and hint is not bool or not isinstance(value, accepted):
        raise ConfigError(f"{key}={value!r}: expected {_EXPECTED[hint]} ({hint.__name__})")
    return float(value) if hint is float else value


def from_dict(cls: type[Settings], values: dict[str, Any], where: str = "") -> Settings:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys by name and values
    that do not have their field's declared type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    moved = [f"{where}{key}" for key in unknown if f"{where}{key}" in LEGACY_KEYS]
    if moved:
        raise ConfigError(f"{moved[0]} (an older hin's setting) is now {LEGACY_KEYS[moved[0]]}: "
                          "rename it")
    if unknown:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: unknown key(s) {unknown}; "
                          f"valid keys are {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{where}{name}.")
        kwargs[name] = _checked(hint, value, f"{where}{name}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML, so 3 is an int and true a bool)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=1e-4)")
    try:
        return key.split("."), yaml.load(raw, Loader=_YAMLLoader) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: {raw!r} is not a value (YAML: "
                          f"{getattr(error, 'problem', None) or error}); quote text values") from None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested dict `values` with `key.path=value` overrides applied."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(values))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return result


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def packaged_config_names() -> list[str]:
    return sorted(path.stem for path in PACKAGED_CONFIGS.glob("*.yaml"))


def find_config(name: str | Path) -> Path:
    """A run configuration file: a path, or the bare name of one shipped inside the package
    (`synth_xe`, `coco_scst`, ...), so the configs work after `pip install` too."""
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a YAML file")
    packaged = PACKAGED_CONFIGS / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if len(path.parts) == 1 and packaged.is_file():
        return packaged
    raise ConfigError(f"config file {path} does not exist; give a YAML path or the name of a "
                      f"shipped config: {', '.join(packaged_config_names())}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = find_config(path)
    with path.open() as handle:
        try:
            values = yaml.load(handle, Loader=_YAMLLoader) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"config file {path}{where}: {problem}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return values


PRECISIONS = ("fp32", "bf16", "auto")
# Feature extraction also offers fp16: the weights in float16, on CUDA only. The reference
# computed the released CLIP grids in fp32 (and stored float32): fp32 is the faithful choice.
EXTRACTION_PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# How extracted features are stored (`--store-as`): float16 halves the files; float32 keeps
# every bit the arithmetic gave, as the reference's grids were stored.
STORAGE_DTYPES = ("float16", "float32")
# How pictures are turned upright (hin.extract.images.as_rgb): `exif` applies the EXIF
# orientation tag, as caption, explain and serve read pictures, and so `hin extract`'s default
# (features of one's own photos must be what captioning them later sees); `stored` reads pixels
# as stored, as the reference's extraction of COCO did: the rule of files that record none.
ORIENTATIONS = ("exif", "stored")
DATASET_ORIENTATION = "stored"
EXTRACT_ORIENTATION = "exif"
# `hin explain --paper`: how the paper's figure marks words and draws maps, and its default
# printed width (a two-column figure in the common conference styles), hin.explain.paper.
PAPER_MARKINGS = ("paper", "diff")
PAPER_MAP_STYLES = ("contour", "tint")
TWO_COLUMN_INCHES = 7.16


def check_precision(name: str, choices: tuple[str, ...] = PRECISIONS,
                    what: str = "precision") -> str:
    """The one check of a precision name (decoding, training, extraction) -> the name."""
    if name not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {name!r}")
    return name


def require_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}")


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


MODES = ("search", "sampling", "both")


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
        for name, setting in decoding_settings().items():
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


def decoding_settings() -> dict[str, Setting]:
    """DecodingConfig's table: each field's `Setting`, in field order."""
    return {f.name: f.metadata["setting"] for f in fields(DecodingConfig)}


def setting_type(name: str) -> type:
    """The Python type of a decoding setting's values: int, float, bool or str."""
    hint = typing.get_type_hints(DecodingConfig)[name]
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
    value, kind = getattr(config, name), setting_type(name)
    if value is None and DecodingConfig.__dataclass_fields__[name].default is None:
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
        unset = " (or unset)" if DecodingConfig.__dataclass_fields__[name].default is None else ""
        raise SettingError(f"{{{name}}} must be {describe_range(setting, kind)}{unset}, got "
                           f"{{{name}_value!r}}", config)


@dataclass(frozen=True)
class DataConfig:
    """Where a dataset's files are and how batches are made from them (docs/model.md §2, §6, §9).

    Defaults point at the synthetic dataset written by `hin data synth --out data/synth`.
    `annotations` is a directory with captions_{train,val}2014.json and the Karpathy split
    files coco_{train,restval,dev,test}_ids.npy, or the path of Karpathy's dataset_coco.json.
    """

    annotations: str = "data/synth"
    grid_features: str = "data/synth/grid.hdf5"
    region_features: str = "data/synth/region.hdf5"
    vocabulary: str = "data/synth/vocab.json"
    max_regions: int = 50
    max_caption_tokens: int = 54
    cache_features: bool = False
    num_workers: int = 2

    def __post_init__(self) -> None:
        require_positive_ints(self, "max_regions", "max_caption_tokens")
        if self.max_caption_tokens < 2:
            raise ConfigError("DataConfig.max_caption_tokens must leave room for <bos> and <eos>")
        require_non_negative_ints(self, "num_workers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        return from_dict(cls, values)


STAGES = ("xe", "scst")
SCST_CAPTIONS = ("beam", "sample")
NONFINITE_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage (docs/model.md §8): cross-entropy (`xe`) or self-critical (`scst`).

    `lr` is the stage's base rate; the epoch-wise schedule of the stage scales it.
    Validation always uses the validation split; the test split is never read here. It is
    `hin evaluate` with the decoding settings `validation` (the beam SCST trains on is found
    with its beam size and length too, as in the reference).
    `tensorboard` mirrors the run's log to TensorBoard when that package is installed.
    `precision` (fp32 | bf16 | auto) is the arithmetic of the training forward passes (the
    validation decoding's is `validation.precision`); losses, rewards and the optimiser state
    are always float32.
    `captions_per_image` k: 1 = shuffled (image, caption) pairs; k > 1 = each batch holds
    batch_size / k images with k of their captions, encoded once per image (XE only:
    SCST batches are `batch_size` images).
    `batch_size` always counts captions.
    `nonfinite`: a non-finite loss stops the run, or (`skip`) skips its batch; more than
    `max_skipped_share` of an epoch's batches (at least one) skipped stops it.
    `scst_captions`: which captions SCST rewards. `beam` (the reference): the validation
    beam's K captions, each against the mean reward of the K; `sample` ("new self-critical"):
    `scst_samples` captions drawn from the model, each against the mean reward of the others.
    """

    stage: str = "xe"
    epochs: int = 20
    batch_size: int = 50
    lr: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    seed: int = 0
    validation: DecodingConfig = DecodingConfig()
    val_batch_size: int = 50
    val_full_metrics: bool = True
    patience: int = 5
    min_epochs: int = 15
    checkpoint_every: int = 0
    max_steps: int = 0
    nonfinite: str = "stop"
    max_skipped_share: float = 0.05
    device: str = "auto"
    precision: str = "fp32"
    captions_per_image: int = 1
    log_every: int = 20
    tensorboard: bool = True
    scst_captions: str = "beam"
    scst_samples: int = 5

    def __post_init__(self) -> None:
        require_positive_ints(self, "epochs", "batch_size", "val_batch_size", "log_every",
                              "captions_per_image")
        check_precision(self.precision, what="TrainConfig.precision")
        if self.batch_size % self.captions_per_image:
            raise ConfigError(f"TrainConfig.batch_size ({self.batch_size}) counts captions and "
                              f"must be a multiple of captions_per_image ({self.captions_per_image})")
        if self.stage not in STAGES:
            raise ConfigError(f"TrainConfig.stage must be one of {STAGES}, got {self.stage!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"TrainConfig.nonfinite must be one of {NONFINITE_POLICIES}, "
                              f"got {self.nonfinite!r}")
        for name in ("patience", "min_epochs", "checkpoint_every", "max_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be a non-negative integer "
                                  f"(0 = off), got {getattr(self, name)!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        for name in ("adam_beta1", "adam_beta2"):     # Adam's decay rates
            if not _finite_number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not _finite_number(self.max_skipped_share) or not 0 <= self.max_skipped_share <= 1:
            raise ConfigError("train.max_skipped_share must be in [0, 1], got "
                              f"{self.max_skipped_share!r}")
        require_choice(self, "scst_captions", SCST_CAPTIONS)
        require_positive_ints(self, "scst_samples")
        if self.scst_samples < 2:
            raise ConfigError(f"TrainConfig.scst_samples must be at least 2 (each sample's "
                              f"baseline is the mean reward of the others), got {self.scst_samples}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved resolved in the run directory and every
    checkpoint. `model.vocab_size` is always taken from the vocabulary file."""

    run_dir: str = "runs/xe"
    model: HINConfig = HINConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        if not str(self.run_dir).strip():
            raise ConfigError("run_dir is empty: name the run's directory, e.g. run_dir=runs/try "
                              "(an empty one would fill the current directory)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        return from_dict(cls, values)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
        """A YAML file (any section may be omitted) with `section.key=value` overrides."""
        values = load_yaml(path) if path else {}
        return cls.from_dict(apply_overrides(values, list(overrides)))


# Settings older hin versions wrote, and where they live now (section.key -> section.key).
LEGACY_KEYS = {"model.max_len": "model.max_positions",
               "train.beam_size": "train.validation.beam_size",
               "train.max_len": "train.validation.max_len"}


def upgrade_legacy(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A saved run configuration (or a part of one: a checkpoint's `model` section) with the
    settings older hin versions wrote moved to today's -> (values, one note per change).
    `train.bf16: true/false` became `train.precision: bf16/fp32`; `model.max_len` (the
    position table) `model.max_positions`; the flat validation settings `train.beam_size`
    and `train.max_len` moved into `train.validation`, whose precision was `train.precision`."""
    values = yaml.safe_load(yaml.safe_dump(values))
    notes = [note for note in (_upgrade_bf16(values), *(_move(values, old, new)
                                                        for old, new in LEGACY_KEYS.items()))
             if note]
    train: dict[str, Any] = values.get("train") or {}
    if any("train.validation" in note for note in notes) and "precision" in train:
        validation = train["validation"]
        if validation.setdefault("precision", train["precision"]) == train["precision"]:
            notes.append(f"train.validation.precision={train['precision']}: an older hin "
                         "validated in the training precision (train.precision)")
    return values, notes


def _move(values: dict[str, Any], old: str, new: str) -> str | None:
    """Move the setting at dotted path `old` to `new` in place -> a note, or None when absent."""
    *old_sections, old_key = old.split(".")
    node: Any = values
    for section in old_sections:
        node = node.get(section) if isinstance(node, dict) else None
    if not isinstance(node, dict) or old_key not in node:
        return None
    value = node.pop(old_key)
    *new_sections, new_key = new.split(".")
    target = values
    for section in new_sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{old}={value!r} (an older hin's setting) moves to {new}, but "
                              f"{section} is not a section")
    if target.setdefault(new_key, value) != value:
        raise ConfigError(f"{old}={value!r} (an older hin's setting) and {new}="
                          f"{target[new_key]!r} disagree; keep {new} alone")
    return f"{old}={value} (an older hin's setting) is read as {new}={value}"


def _upgrade_bf16(values: dict[str, Any]) -> str | None:
    train = values.get("train")
    if not isinstance(train, dict) or "bf16" not in train:
        return None
    bf16 = train.pop("bf16")
    if not isinstance(bf16, bool):
        raise ConfigError(f"train.bf16={bf16!r}: expected true or false (older hin's setting, "
                          "now train.precision)")
    precision = "bf16" if bf16 else "fp32"
    if train.setdefault("precision", precision) != precision:
        raise ConfigError(f"train.bf16={str(bf16).lower()} and train.precision="
                          f"{train['precision']} disagree; keep train.precision alone")
    return (f"train.bf16={str(bf16).lower()} (an older hin's setting) is read as "
            f"train.precision={precision}")
