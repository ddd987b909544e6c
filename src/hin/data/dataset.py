"""Datasets and batching: image·caption pairs (or an image with a group of its captions) for
cross-entropy training, images with all their references for evaluation and SCST, and the
one `collate` that turns any of them into a `Batch`.

Features stay in their on-disk dtype per sample and are cast to float32 once per batch.
Region padding rows are exactly zero: the model derives its padding mask from them (docs/model.md §2).
This module must never know about the model beyond the tensors a `Batch` carries.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from tqdm import tqdm

from hin.data.coco import Split
from hin.data.errors import DataError
from hin.data.features import FeatureStore, stack_grids
from hin.data.vocab import Vocabulary
from hin.errors import HINError
from hin.processes import worker_init


@dataclass(frozen=True)
class Sample:
    """One dataset item: an image's features, optionally one encoded caption (a list of ids)
    or a group of them (a tuple of such lists), all references."""

    image_id: int
    grid: np.ndarray
    region: np.ndarray
    tokens: list[int] | tuple[list[int], ...] | None
    references: tuple[str, ...]


@dataclass
class Batch:
    """What the model and the metrics consume.

    grid [B, Ng, Dg] and region [B, Nr, Dr] float32 (region padding rows all zero);
    tokens [B, T] int64 `<bos> ... <eos>` padded with `<pad>` — [B, K, T] for caption groups,
    where a group shorter than K is filled with rows of `<pad>` only — or None for image datasets;
    image_ids and references (all reference captions of each image) in batch order.
    """

    grid: torch.Tensor
    region: torch.Tensor
    tokens: torch.Tensor | None
    image_ids: list[int]
    references: list[list[str]]

    def __len__(self) -> int:
        return len(self.image_ids)

    def to(self, device: torch.device | str) -> Batch:
        return replace(self, grid=self.grid.to(device), region=self.region.to(device),
                       tokens=None if self.tokens is None else self.tokens.to(device))


class CaptionPairs(Dataset):
    """Every training caption once, encoded up front: cross-entropy training.

    `captions_per_image` 1: one item per (image, caption) pair. k > 1: one item per group of
    up to k captions of one image (an image's captions in annotation order, cut into groups
    of k; the last group may be shorter), so the encoder runs once for the whole group.
    """

    def __init__(self, split: Split, features: FeatureStore, vocab: Vocabulary, max_len: int,
                 check_features: bool = True, progress: bool = False,
                 captions_per_image: int = 1) -> None:
        if check_features:
            features.require(split.image_ids, split.name)
        self.split = split
        self.features = features
        self.pad_id = vocab.pad_id
        self.captions_per_image = captions_per_image
        pairs = split.pairs()
        full = [vocab.encode(caption)
                for _, caption in tqdm(pairs, desc=f"encoding {split.name} captions",
                                       unit="caption", disable=not progress)]
        self.longest = max((len(ids) for ids in full), default=0)   # ids, <bos> and <eos> included
        self.cut = sum(len(ids) > max_len for ids in full)          # captions cut to max_len
        encoded = [vocab.shorten(ids, max_len) for ids in full]
        if captions_per_image == 1:
            self.image_ids = [image_id for image_id, _ in pairs]
            self.tokens: list[list[int]] | list[tuple[list[int], ...]] = encoded
            return
        self.image_ids, groups = [], []
        start = 0
        for image in split.images.values():
            captions = encoded[start:start + len(image.captions)]
            start += len(image.captions)
            for first in range(0, len(captions), captions_per_image):
                self.image_ids.append(image.image_id)
                groups.append(tuple(captions[first:first + captions_per_image]))
        self.tokens = groups

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        grid, region = self.features[image_id]
        return Sample(image_id, grid, region, self.tokens[index],
                      self.split.images[image_id].captions)


class ImageReferences(Dataset):
    """Every image of a split once, with all its reference captions: evaluation and SCST."""

    pad_id = None

    def __init__(self, split: Split, features: FeatureStore, check_features: bool = True) -> None:
        if check_features:
            features.require(split.image_ids, split.name)
        self.split = split
        self.features = features
        self.image_ids = split.image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        grid, region = self.features[image_id]
        return Sample(image_id, grid, region, None, self.split.images[image_id].captions)


def collate(samples: Sequence[Sample], pad_id: int | None = None) -> Batch:
    """Stack samples into a `Batch`; token rows are padded to the longest with `pad_id`."""
    grid_sizes = {sample.grid.shape for sample in samples}
    if len(grid_sizes) > 1:
        sizes = {sample.image_id: list(sample.grid.shape) for sample in samples}
        raise DataError(f"grid features of one batch differ in shape {sizes}; all images of a "
                        f"dataset must have the same number of grid tokens (re-extract them alike)")
    tokens = None
    if samples[0].tokens is not None:
        if pad_id is None:
            raise DataError("collate needs pad_id (the vocabulary's <pad> id) to batch captions")
        grouped = isinstance(samples[0].tokens, tuple)
        groups = [_caption_group(sample) for sample in samples]
        length = max(len(caption) for group in groups for caption in group)
        tokens = torch.full((len(samples), max(map(len, groups)), length), pad_id, dtype=torch.long)
        for row, group in enumerate(groups):
            for column, caption in enumerate(group):
                tokens[row, column, :len(caption)] = torch.tensor(caption, dtype=torch.long)
        if not grouped:
            tokens = tokens[:, 0]
    return Batch(
        grid=torch.from_numpy(stack_grids([sample.grid for sample in samples],
                                          [sample.image_id for sample in samples])).float(),
        region=torch.from_numpy(np.stack([sample.region for sample in samples])).float(),
        tokens=tokens,
        image_ids=[sample.image_id for sample in samples],
        references=[list(sample.references) for sample in samples])


def _caption_group(sample: Sample) -> tuple[list[int], ...]:
    """A sample's encoded captions as a group: its one caption, or the grouped loader's."""
    if sample.tokens is None:
        raise DataError(f"image {sample.image_id} has no caption in a batch of captioned samples")
    return sample.tokens if isinstance(sample.tokens, tuple) else (sample.tokens,)


@dataclass(frozen=True)
class _WorkerFailure:
    """What a DataLoader worker hands back instead of a batch when reading it raised a
    HINError: the error itself, re-raised as it is in the main process (torch would wrap it
    in "Caught DataError in DataLoader worker process 0" and a traceback)."""

    error: HINError


class _ReportingDataset(Dataset):
    """`dataset`, whose HINErrors in a worker process travel back as `_WorkerFailure`s."""

    def __init__(self, dataset: CaptionPairs | ImageReferences) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample | _WorkerFailure:
        try:
            return self.dataset[index]
        except HINError as error:
            if get_worker_info() is None:
                raise
            return _WorkerFailure(error)


def _collate_or_failure(samples: Sequence[Sample | _WorkerFailure],
                        pad_id: int | None) -> Batch | _WorkerFailure:
    read = []
    for sample in samples:
        if isinstance(sample, _WorkerFailure):
            return sample
        read.append(sample)
    try:
        return collate(read, pad_id)
    except HINError as error:        # batching fails too (grids of two token counts)
        if get_worker_info() is None:
            raise
        return _WorkerFailure(error)


class _Loader(DataLoader):
    # a generator of batches where DataLoader's __iter__ returns its iterator object
    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, _WorkerFailure):
                raise batch.error
            yield batch


def make_loader(dataset: CaptionPairs | ImageReferences, batch_size: int, *, shuffle: bool = False,
                num_workers: int = 0, seed: int = 0, sampler: Sampler[int] | Iterable[int] | None = None,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader yielding `Batch`es. Shuffling and worker seeds come from its own seeded
    generator, never from the global RNG, so a resumed training run repeats exactly. A
    HINError (a malformed feature entry) raised in a worker reaches the caller as itself."""
    generator = torch.Generator().manual_seed(seed)
    return _Loader(_ReportingDataset(dataset), batch_size=batch_size,
                   shuffle=shuffle and sampler is None, sampler=sampler, num_workers=num_workers,
                   collate_fn=functools.partial(_collate_or_failure, pad_id=dataset.pad_id),
                   generator=generator, drop_last=drop_last,
                   persistent_workers=num_workers > 0, worker_init_fn=worker_init())
