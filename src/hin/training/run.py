"""Starting and resuming training runs (docs/model.md §8). A run directory holds
`config.yaml` (resolved, every path absolute), `data.json` (what its data is:
hin.data.identity), `log.jsonl` (one JSON object per step and per epoch), `last.pt` and
`best.pt` (hin.training.loop).

Everything a `Trainer` needs is built here and passed in: the vocabulary, the --init
checkpoint's model and data settings, splits and features, datasets, model,
DistributedDataParallel, optimiser, the resumed state, Java and the CIDEr-D table.
Everything checkable (splits, feature widths, vocabulary, one batch of data) is checked by
one preflight before the run directory is created or touched; the directory is then locked
(hin.locks) so that one process at a time trains in it. A directory holding a checkpoint is
an existing run: it is resumed, never started afresh; one whose run saved no checkpoint yet
may be started again. A finished run says how to extend it, and every run ends saying why
it stopped. SCST starts from a checkpoint (`init`), whose path and sha256 the log and every
checkpoint record; the model's settings, the vocabulary and (unless given) the data
settings then come from it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import fields, replace
from pathlib import Path
from shlex import quote
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from hin import checkpoint
from hin.checkpoint.record import CheckpointRecord, require_matching_features
from hin.config import ConfigError, DataConfig, HINConfig, RunConfig, apply_overrides, upgrade_legacy
from hin.data.coco import Split, load_splits
from hin.data.dataset import CaptionPairs, ImageReferences
from hin.data.errors import DataError
from hin.data.familiarity import feature_profile
from hin.data.features import FeatureStore
from hin.data.identity import data_identity
from hin.data.vocab import Vocabulary, require_same_words
from hin.devices import resolve_precision
from hin.evaluate import tokenised_references
from hin.files import write_json
from hin.locks import refuse_if_locked
from hin.metrics import CiderDTable, JavaNotFoundError, find_java
from hin.model import HIN
from hin.training import distributed, optimizer
from hin.training.loop import Trainer, TrainingData
from hin.training.rundir import (
    BEST,
    CIDER_TABLE,
    CONFIG_FILE,
    DATA_FILE,
    LAST,
    RunDirectoryError,
    RunFolder,
    announce,
    refuse_changed_data,
    refuse_edited_config,
    refuse_finished,
    refuse_new_epoch_order,
    repair_log,
    restartable,
    stopping_rule_met,
)
from hin.training.scst import SelfCritical, scst_decoding
from hin.training.state import Progress, restore_rng

Say = Callable[[str], None]


def build_trainer(config: RunConfig, *, init: str | Path | None = None,
                  resume_state: dict[str, Any] | None = None, progress: bool = True,
                  model_keys: Collection[str] | None = None,
                  data_keys: Collection[str] | None = None,
                  claim: Callable[[], str | None] | None = None, restarted: bool = False) -> Trainer:
    """A `Trainer` for `config`, from scratch, from `init`'s weights, or from `resume_state`
    (read from `last.pt`), with its run directory opened and how the run began logged
    (`restarted`: a run that saved no checkpoint begins again). `model_keys`, `data_keys`:
    the model and data settings the user gave (default: those that differ from the
    defaults); given model settings must agree with `init`'s, given data settings replace
    `init`'s. `claim`: see RunFolder.open."""
    context = distributed.setup(config.train.device)

    def say(message: str) -> None:
        announce(context, message)

    init = Path(init).resolve() if init else None
    init_model, init_extra, init_digest = (load_init(init, config.model, model_keys) if init
                                           else (None, {}, ""))
    unused = model_conflicts(config.model, init_model.config, changed_fields(config.model)) \
        if init_model else []
    if unused:
        say(f"note: the model comes from --init {init}; the configuration's "
            f"{', '.join(unused)} are not used")
    init_recorded = CheckpointRecord.from_dict(init_extra, f"--init {init}")
    if init and init_recorded.config:
        config = replace(config, data=init_data(init, init_recorded.config, config.data, data_keys, say))
    config = absolute_paths(config)
    recorded = (resume_state or {}).get("vocabulary") or init_recorded.vocabulary
    source = resume_state.get("source", "the run") if resume_state else f"--init {init}"
    vocab = run_vocabulary(config.data.vocabulary, recorded, source, say)
    init_record = ({"path": str(init), "sha256": init_digest} if init
                   else (resume_state or {}).get("init"))
    model_config = init_model.config if init_model else replace(config.model, vocab_size=len(vocab))
    config = replace(config, model=model_config)
    if init:
        require_matching_features(f"--init {init}", init_recorded,
                                  {"grid": config.data.grid_features,
                                   "region": config.data.region_features},
                                  {"grid": "data.grid_features", "region": "data.region_features"})
    train = config.train
    data, train_split = load_data(config, vocab, f"--init {init}" if init else source if resume_state else None,
                                  show_progress=progress and context.is_main, say=say)
    if resume_state is not None:
        refuse_changed_data(source, resume_state.get("data_identity"),
                            data.identity, Progress(**resume_state["progress"]),
                            resume_state.get("accept_data_change", False), say)
    precision = resolve_precision(train.precision, context.device)

    torch.manual_seed(train.seed)
    model = (init_model or HIN(model_config)).to(context.device)
    critic = SelfCritical(model, scst_decoding(train)) if train.stage == "scst" else None
    network: torch.nn.Module = model if critic is None else critic
    if context.distributed:
        network = DistributedDataParallel(network)
    adam = optimizer.adam(model.parameters(), lr=train.lr, betas=(train.adam_beta1, train.adam_beta2))
    state = Progress()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state(adam, resume_state["optimizer"])
        state = Progress(**resume_state["progress"])
        restore_rng(resume_state["rng"])
    java = validation_java(config, say)
    folder = RunFolder.open(config, context, claim)
    if context.is_main:
        write_json(folder.run_dir / DATA_FILE, data.identity)
    if restarted:
        folder.log({"event": "restart", "step": 0})
    if init and init_record is not None:
        folder.log({"event": "init", **init_record})
    if resume_state is not None:
        folder.log({"event": "resume", "step": state.step, "epoch": state.epoch})
    table = cider_table(folder, train_split) if train.stage == "scst" else None
    return Trainer(config, context, model=model, network=network, critic=critic, optimizer=adam,
                   progress=state, data=data, vocab=vocab, folder=folder, precision=precision, java=java,
                   cider_table=table, init_record=init_record, show_progress=progress and context.is_main)


def absolute_paths(config: RunConfig) -> RunConfig:
    """`config` with run_dir and every data path absolute, resolved once against the working
    directory of the command that gave them: config.yaml and every checkpoint record them so,
    and a resume from another directory reads the same files."""
    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    data = config.data
    data = replace(data, annotations=absolute(data.annotations),
                   grid_features=absolute(data.grid_features),
                   region_features=absolute(data.region_features),
                   vocabulary=absolute(data.vocabulary))
    return replace(config, run_dir=absolute(config.run_dir), data=data)


def load_data(config: RunConfig, vocab: Vocabulary, model_from: str | None, *,
              show_progress: bool, say: Say) -> tuple[TrainingData, Split]:
    """The run's datasets, checked by `preflight` and `require_one_batch` -> (the data, the
    training split). `model_from`: where the model's settings come from (None: config.model)."""
    train, data, model = config.train, config.data, config.model
    splits = load_splits(data.annotations, ["train", "val"])
    store = FeatureStore(data.grid_features, data.region_features, max_regions=data.max_regions,
                         grid_dim=model.grid_dim, region_dim=model.region_dim, cache=data.cache_features)
    preflight(config, splits, store, model_from)
    profile = feature_profile(splits["train"].image_ids, lambda image_id: store[image_id][0])
    train_set = (CaptionPairs(splits["train"], store, vocab, data.max_caption_tokens,
                              progress=show_progress, captions_per_image=train.captions_per_image)
                 if train.stage == "xe" else ImageReferences(splits["train"], store))
    if isinstance(train_set, CaptionPairs):
        check_caption_lengths(config, train_set, say)
    require_one_batch(config, len(train_set))
    identity = data_identity(data.annotations, data.grid_features, data.region_features, splits)
    return TrainingData(train_set, ImageReferences(splits["val"], store),
                        tokenised_references(splits["val"]), profile, identity), splits["train"]


def load_init(path: str | Path, wanted: HINConfig,
              model_keys: Collection[str] | None) -> tuple[HIN, dict[str, Any], str]:
    """The --init checkpoint's model, extra record and sha256 (of the bytes read, once);
    model settings the user gave (`model_keys`) must agree with it."""
    model, extra, digest = checkpoint.load_with_digest(path)
    if model_keys is None:
        model_keys = changed_fields(wanted)
    conflicts = model_conflicts(wanted, model.config, model_keys)
    if conflicts:
        raise ConfigError(f"the model settings come from --init {path}, but "
                          f"{', '.join(conflicts)} differ from it: drop those model.* "
                          "settings (or train from scratch without --init)")
    return model, extra, digest


def changed_fields(config: HINConfig) -> list[str]:
    """The model settings that differ from the defaults (those someone set)."""
    return [f.name for f in fields(HINConfig) if getattr(config, f.name) != getattr(HINConfig(), f.name)]


def init_data(path: str | Path, saved: dict[str, Any], given: DataConfig,
              data_keys: Collection[str] | None, say: Say) -> DataConfig:
    """The data settings `init` was trained with, except those the user gave."""
    recorded = DataConfig.from_dict(upgrade_legacy(saved)[0]["data"])
    if data_keys is None:
        data_keys = [f.name for f in fields(DataConfig)
                     if getattr(given, f.name) != getattr(DataConfig(), f.name)]
    kept = {key: getattr(given, key) for key in data_keys
            if getattr(given, key) != getattr(recorded, key)}
    instead = "; given here and used instead: " + ", ".join(
        f"data.{key}={value} (checkpoint: {getattr(recorded, key)})"
        for key, value in sorted(kept.items())) if kept else ""
    say(f"data settings from --init {path} (annotations {recorded.annotations}, "
        f"vocabulary {recorded.vocabulary}){instead}")
    return replace(recorded, **kept)


def run_vocabulary(path: str, recorded: dict[str, Any] | None, source: str, say: Say) -> Vocabulary:
    """The run's vocabulary: the one `source` (the resumed run, the --init checkpoint)
    records, which the file data.vocabulary must equal where it exists; else that file."""
    if recorded is None:
        vocab = Vocabulary.load(path)
        unreachable = vocab.unreachable()
        if unreachable:
            say(f"warning: {path}: {len(unreachable)} entries the tokenizer never produces "
                f"(first: {', '.join(repr(word) for word in unreachable[:5])}), so no caption "
                "uses them: build the vocabulary with `hin data vocab` rather than by hand")
        return vocab
    vocab = Vocabulary.from_dict(recorded, source=f"recorded in {source}")
    if not Path(path).exists():
        say(f"data.vocabulary {path} does not exist; using the vocabulary {vocab.source}")
        return vocab
    require_same_words(vocab, Vocabulary.load(path),
                       "a run keeps the vocabulary it was trained with: point "
                       "data.vocabulary at that one (or leave it out)")
    return vocab


def validation_java(config: RunConfig, say: Say) -> str | None:
    """Java for validation's full COCO table, when asked for and found."""
    if not config.train.val_full_metrics:
        return None
    try:
        return find_java()
    except JavaNotFoundError as error:
        say(f"validation: full metric table off ({error}); CIDEr-D is still computed")
        return None


def cider_table(folder: RunFolder, split: Split) -> CiderDTable:
    """Training-reference document frequencies for the SCST reward, built once (rank 0) and
    kept in the run directory."""
    path = folder.run_dir / CIDER_TABLE
    if folder.context.is_main and not path.is_file():
        folder.say(f"building the CIDEr-D table of {len(split.images)} training images")
        path.parent.mkdir(parents=True, exist_ok=True)
        CiderDTable.from_references(split.references()).save(path)
    distributed.broadcast_object(folder.context, None)   # others wait for the file
    return CiderDTable.load(path)


def model_conflicts(wanted: HINConfig, actual: HINConfig, keys: Collection[str]) -> list[str]:
    """`model.key=wanted (checkpoint: actual)` for each of `keys` whose values differ; the
    vocabulary size is never one of them (it comes from the vocabulary)."""
    return [f"model.{key}={getattr(wanted, key)!r} (checkpoint: {getattr(actual, key)!r})"
            for key in sorted(set(keys)) if key != "vocab_size"
            and getattr(wanted, key) != getattr(actual, key)]


def preflight(config: RunConfig, splits: dict[str, Split], store: FeatureStore,
              model_from: str | None) -> None:
    """What every training entry (start, resume, SCST, the demo) checks before the run
    directory is created: both splits hold images, and the feature files' widths are the
    model's. `model_from`: where the model's settings come from (None: from config.model)."""
    data = config.data
    check_settings(config)
    for name, split in splits.items():
        if not split.images:
            raise DataError(f"the {name} split of {data.annotations} holds no images; training "
                            "needs training and validation images: check each image's split "
                            "(train, restval, val, test) in the annotations")
    grid, region = store.widths(next(iter(splits["train"].images)))
    for key, width, path in (("grid_dim", grid, data.grid_features),
                             ("region_dim", region, data.region_features)):
        wanted = getattr(config.model, key)
        if width != wanted:
            fix = (f"set model.{key}={width}" if model_from is None else
                   f"the model (from {model_from}) needs features made like those it was "
                   "trained on")
            raise ConfigError(f"{path} holds {width}-wide features but model.{key}={wanted}: "
                              f"{fix}")


def check_settings(config: RunConfig) -> None:
    """Settings that would fail only at the first validation, checked before step 1."""
    validation, model = config.train.validation, config.model
    if validation.max_len > model.max_positions:
        raise ConfigError(f"train.validation.max_len={validation.max_len} is more than the "
                          f"{model.max_positions} positions the model has (model.max_positions): "
                          f"set train.validation.max_len={model.max_positions} or less")
    if validation.beam_size > model.vocab_size:
        raise ConfigError(f"train.validation.beam_size={validation.beam_size} is more than the "
                          f"model's vocabulary ({model.vocab_size} words): set a smaller "
                          "train.validation.beam_size")


def check_caption_lengths(config: RunConfig, pairs: CaptionPairs, say: Say) -> None:
    """The longest training caption must fit the model's positions (teacher forcing feeds
    all its ids but the last); captions cut to data.max_caption_tokens are counted."""
    limit, positions = config.data.max_caption_tokens, config.model.max_positions
    if min(pairs.longest, limit) - 1 > positions:
        raise ConfigError(f"data.max_caption_tokens={limit} lets the longest training caption "
                          f"({pairs.longest} ids with <bos> and <eos>) take "
                          f"{min(pairs.longest, limit) - 1} positions, more than the model's "
                          f"{positions} (model.max_positions): set data.max_caption_tokens="
                          f"{positions + 1} or less")
    if pairs.cut:
        say(f"{pairs.cut} of {len(pairs.split.pairs())} training captions are longer than "
            f"data.max_caption_tokens={limit} ids (the longest has {pairs.longest}) and are cut "
            "to it")


def require_one_batch(config: RunConfig, items: int) -> None:
    """Refuse a training split smaller than one batch: every epoch would have no step."""
    train = config.train
    if train.stage == "scst":
        have, needed = f"{items} images", train.batch_size
        unit = "SCST batches count images"
    elif train.captions_per_image == 1:
        have, needed, unit = f"{items} captions", train.batch_size, "batches count captions"
    else:
        have = f"{items} groups of up to {train.captions_per_image} captions"
        needed = train.batch_size // train.captions_per_image
        unit = f"a batch holds {needed} groups"
    if items < needed:
        largest = items * (train.batch_size // needed)
        raise ConfigError(f"the training split of {config.data.annotations} has {have}, fewer "
                          f"than one batch of train.batch_size={train.batch_size} ({unit}): "
                          f"lower train.batch_size to at most {largest}")


def start(config: RunConfig, *, init: str | Path | None = None, progress: bool = True,
          model_keys: Collection[str] | None = None,
          data_keys: Collection[str] | None = None) -> Path:
    """A new run in config.run_dir -> best.pt path. The directory must hold no checkpoint;
    one holding a run that saved none yet is started again (said so, and logged).
    `init`: start from that checkpoint's weights, model and data settings (required for
    SCST); `model_keys`, `data_keys`: the settings the user gave (see build_trainer)."""
    run_dir = Path(config.run_dir)
    if config.train.stage == "scst" and init is None:
        raise ConfigError("train.stage=scst fine-tunes a trained model: give the cross-entropy "
                          "checkpoint to start from with --init (e.g. --init runs/synth_xe/best.pt)")
    refuse_if_locked(run_dir)
    earlier = restartable(run_dir)

    def claim() -> str | None:
        found = restartable(run_dir)
        return (f"{run_dir} holds a run that saved no checkpoint ({', '.join(found)}): "
                "starting it again from the beginning" if found else None)

    return _fit(build_trainer(config, init=init, progress=progress, model_keys=model_keys,
                              data_keys=data_keys, claim=claim, restarted=bool(earlier)))


def resume(run_dir: str | Path, overrides: Sequence[str] = (), progress: bool = True, *,
           accept_data_change: bool = False) -> Path:
    """Continue the run saved in run_dir/last.pt, optionally with `key=value` overrides
    (not of the model's settings, nor of the vocabulary, nor of how the epoch is cut into
    batches mid-epoch); a finished run is refused with how to extend it. Data that differs
    from what last.pt records is refused, or at an epoch boundary `accept_data_change`d."""
    run_dir = Path(run_dir)
    last = run_dir / LAST
    if not last.is_file():
        again = (f" (it holds a run that saved no checkpoint yet: `hin train --config CONFIG "
                 f"run_dir={quote(str(run_dir))}` starts it again)" if (run_dir / CONFIG_FILE).exists() else "")
        raise RunDirectoryError(f"{run_dir} holds no {LAST} to resume from; start a run there "
                                f"with `hin train --config ...`{again}")
    refuse_if_locked(run_dir)
    read_at = last.stat()
    payload = checkpoint.read_hin(last)
    record = CheckpointRecord.from_dict(payload["extra"], str(last))
    if record.config is None or record.training is None:
        raise RunDirectoryError(f"{last} holds no training state (it was not written by "
                                "`hin train`): start a run with `hin train --config ...`")
    values, notes = upgrade_legacy(record.config)
    saved = RunConfig.from_dict(values)
    refuse_new_identity(run_dir, saved, overrides)
    config = replace(RunConfig.from_dict(apply_overrides(values, list(overrides))),
                     run_dir=str(run_dir))
    conflicts = model_conflicts(config.model, saved.model, [f.name for f in fields(HINConfig)])
    if conflicts:
        raise ConfigError(f"a resumed run keeps its model: {', '.join(conflicts)} differ from "
                          f"{last}; start a new run for another model")
    state = {"model": payload["model"], "init": record.init, "source": str(last),
             "vocabulary": record.vocabulary, "data_identity": record.data_identity or None,
             "accept_data_change": accept_data_change, **record.training}
    progress_now = Progress(**state["progress"])
    refuse_edited_config(run_dir, saved, config, list(overrides))
    refuse_new_epoch_order(run_dir, saved, config, progress_now)
    state["progress"]["done"] = stopping_rule_met(config, progress_now)
    refuse_finished(run_dir, config, Progress(**state["progress"]))

    def claim() -> str | None:
        if last.stat().st_mtime_ns != read_at.st_mtime_ns:
            raise RunDirectoryError(f"{last} changed while this resume was loading (another "
                                    "process trained meanwhile); resume again")
        said = [f"{last}: {note}" for note in notes] + [repair_log(run_dir) or ""]
        return "\n".join(line for line in said if line) or None

    return _fit(build_trainer(config, resume_state=state, progress=progress, claim=claim))


def refuse_new_identity(run_dir: Path, saved: RunConfig, overrides: Sequence[str]) -> None:
    """A resumed run stays where and what it is: its folder (`run_dir=` is the --resume
    argument) and its stage (with the stage go its schedule, optimiser state and loss)."""
    given = {text.partition("=")[0]: text.partition("=")[2] for text in overrides}
    if "run_dir" in given:
        raise ConfigError(f"run_dir={given['run_dir']} cannot be given with --resume: the run "
                          f"lives in {run_dir}. To continue it elsewhere, copy that folder and "
                          "resume the copy")
    stage = given.get("train.stage", saved.train.stage)
    if stage != saved.train.stage:
        raise ConfigError(
            f"train.stage={stage}: the run in {run_dir} is a {saved.train.stage} run, and a "
            "resumed run keeps its stage (its optimiser, schedule and loss). To fine-tune it "
            f"with SCST, start a new run from its best checkpoint: `hin train --config "
            f"small_scst --init {quote(str(run_dir / BEST))} run_dir=NEW_RUN_DIR`"
            if stage == "scst" else
            f"train.stage={stage}: the run in {run_dir} is a {saved.train.stage} run, and a "
            "resumed run keeps its stage: start a new run for another stage")


def _fit(trainer: Trainer) -> Path:
    try:
        return trainer.fit()
    finally:
        trainer.close()
