"""Settings older hin versions wrote, and where they live now: saved runs and checkpoints
from before a rename are read, each move told in a note (`upgrade_legacy`), and a file that
still names an old key is told its new name (hin.config.files.from_dict).
"""

from __future__ import annotations

from typing import Any

import yaml

from hin.config.base import ConfigError

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
