"""Configuration as files and text: YAML (with learning rates like `1e-4` read as numbers),
`key=value` overrides, the configs shipped inside the package, and the nested dicts of either
made into the settings' dataclasses with unknown keys and wrong types refused by name.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from hin.config.base import ConfigError, Settings
from hin.config.legacy import LEGACY_KEYS


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


PACKAGED_CONFIGS = Path(__file__).parent.parent / "configs"   # src/hin/configs


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
