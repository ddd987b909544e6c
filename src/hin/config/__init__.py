"""Typed configuration: dataclasses, YAML files and `key=value` command-line overrides.

Every run and checkpoint stores its resolved configuration as a plain dict produced here,
so a saved model can always be rebuilt without the files it was trained from. Every setting's
name, type, default and check, and where older hin versions' settings live now, in one place:

- base: ConfigError, the checks settings share, named choices (precisions, orientations, ...)
- settings: HINConfig, DataConfig, TrainConfig, RunConfig
- decoding: DecodingConfig and its table of `Setting`s, which every surface reads
- files: YAML, `key=value` overrides, packaged configs, dicts -> dataclasses (`from_dict`)
- legacy: older hin versions' keys and `upgrade_legacy`

Importers use `from hin.config import ...`; the modules import each other, never this package.
"""

from __future__ import annotations

from hin.config.base import (
    DATASET_ORIENTATION,
    EXTRACT_ORIENTATION,
    EXTRACTION_PRECISIONS,
    MAX_SEED,
    ORIENTATIONS,
    PAPER_MAP_STYLES,
    PAPER_MARKINGS,
    POSITION_TABLES,
    PRECISIONS,
    STORAGE_DTYPES,
    TWO_COLUMN_INCHES,
    ConfigError,
    Settings,
    check_precision,
    require_choice,
    require_non_negative_ints,
    require_positive_ints,
)
from hin.config.decoding import (
    MODES,
    DecodingConfig,
    Setting,
    SettingError,
    _setting,
    describe_range,
    settings_of,
    type_of,
)
from hin.config.files import (
    PACKAGED_CONFIGS,
    apply_overrides,
    find_config,
    from_dict,
    load_yaml,
    packaged_config_names,
    parse_override,
)
from hin.config.legacy import LEGACY_KEYS, upgrade_legacy
from hin.config.settings import (
    NONFINITE_POLICIES,
    SCST_CAPTIONS,
    STAGES,
    DataConfig,
    HINConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "DATASET_ORIENTATION", "EXTRACTION_PRECISIONS", "EXTRACT_ORIENTATION", "LEGACY_KEYS",
    "MAX_SEED", "MODES", "NONFINITE_POLICIES", "ORIENTATIONS", "PACKAGED_CONFIGS",
    "PAPER_MAP_STYLES", "PAPER_MARKINGS", "POSITION_TABLES", "PRECISIONS", "SCST_CAPTIONS",
    "STAGES", "STORAGE_DTYPES", "TWO_COLUMN_INCHES", "ConfigError", "DataConfig",
    "DecodingConfig", "HINConfig", "RunConfig", "Setting", "SettingError", "Settings",
    "TrainConfig", "_setting", "apply_overrides", "check_precision", "decoding_settings",
    "describe_range", "find_config", "from_dict", "load_yaml", "packaged_config_names",
    "parse_override", "require_choice", "require_non_negative_ints", "require_positive_ints",
    "setting_type", "upgrade_legacy"]


def decoding_settings() -> dict[str, Setting]:
    """DecodingConfig's table: each field's `Setting`, in field order. It is read through this
    package's `DecodingConfig`, so that a table extended in place reaches every surface."""
    return settings_of(DecodingConfig)


def setting_type(name: str) -> type:
    """The Python type of a decoding setting's values: int, float, bool or str."""
    return type_of(DecodingConfig, name)
