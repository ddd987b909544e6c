"""Datasets and collate: batch shapes, token padding, zero region rows, worker processes."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers.data_files import GRID_DIM, GRID_TOKENS, REGION_DIM, write_features
from hin.data.coco import ImageRecord, Split
from hin.data.dataset import Batch, CaptionPairs, ImageReferences, Sample, collate, make_loader
from hin.data.errors import DataError
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary

REGION_COUNTS = {1: 2, 2: 0, 3: 4, 4: 1}
CAPTIONS = {1: ("a red circle", "a circle"), 2: ("a blue square on the left",),
            3: ("two shapes",), 4: ("a red square", "a red circle and a blue square")}


@pytest.fixture
def parts(tmp_path):
    split = Split("train", {image_id: ImageRecord(image_id, f"{image_id}.png", captions)
                            for image_id, captions in CAPTIONS.items()}, str(tmp_path))
    store = FeatureStore(*write_features(tmp_path, REGION_COUNTS), max_regions=3,
                         grid_dim=GRID_DIM, region_dim=REGION_DIM)
    vocab = Vocabulary.build(split.captions(), min_freq=2)
    return split, store, vocab


def test_caption_pairs_batch(parts):
    split, store, vocab = parts
    dataset = CaptionPairs(split, store, vocab, max_len=5)
    assert len(dataset) == 6
    batch = collate([dataset[index] for index in range(len(dataset))], vocab.pad_id)
    assert isinstance(batch, Batch) and len(batch) == 6
    assert batch.grid.shape == (6, GRID_TOKENS, GRID_DIM) and batch.grid.dtype == torch.float32
    assert batch.region.shape == (6, 3, REGION_DIM) and batch.region.dtype == torch.float32
    assert batch.image_ids == [1, 1, 2, 3, 4, 4]
    assert batch.references[0] == ["a red circle", "a circle"]
    assert batch.tokens.dtype == torch.long and batch.tokens.shape == (6, 5)
    expected_first = [vocab.bos_id, vocab.index("a"), vocab.index("red"), vocab.index("circle"),
                      vocab.eos_id]
    assert batch.tokens[0].tolist() == expected_first
    assert batch.tokens[1].tolist() == [vocab.bos_id, vocab.index("a"), vocab.index("circle"),
                                        vocab.eos_id, vocab.pad_id]
    assert batch.tokens[2, -1].item() == vocab.eos_id  # truncated to max_len, <eos> kept


def test_caption_groups_hold_every_caption_once_and_pad_short_groups(parts):
    split, store, vocab = parts
    split.images[3] = ImageRecord(3, "3.png", ("two shapes", "a red circle", "a blue square"))
    pairs = CaptionPairs(split, store, vocab, max_len=6)
    groups = CaptionPairs(split, store, vocab, max_len=6, captions_per_image=2)
    assert groups.image_ids == [1, 2, 3, 3, 4]
    assert [len(group) for group in groups.tokens] == [2, 1, 2, 1, 2]
    assert sorted(caption for group in groups.tokens for caption in group) == sorted(pairs.tokens)
    for image_id, group in zip(groups.image_ids, groups.tokens):   # a group is one image's
        assert all(caption in [pairs.tokens[i] for i, owner in enumerate(pairs.image_ids)
                               if owner == image_id] for caption in group)
    batch = collate([groups[index] for index in range(len(groups))], vocab.pad_id)
    assert batch.tokens.shape == (5, 2, 6) and batch.image_ids == [1, 2, 3, 3, 4]
    assert batch.grid.shape[0] == 5
    assert torch.all(batch.tokens[1, 1] == vocab.pad_id) and torch.all(batch.tokens[3, 1] == vocab.pad_id)
    assert batch.tokens[0, 1].tolist() == [vocab.bos_id, vocab.index("a"), vocab.index("circle"),
                                           vocab.eos_id, vocab.pad_id, vocab.pad_id]


def test_region_padding_rows_are_exactly_zero(parts):
    split, store, _ = parts
    batch = collate([ImageReferences(split, store)[index] for index in range(4)])
    padding = batch.region.abs().sum(-1) == 0  # the model's mask rule (docs/model.md §2)
    assert padding.tolist() == [[False, False, True], [True, True, True],
                                [False, False, False], [False, True, True]]
    assert batch.tokens is None and batch.image_ids == [1, 2, 3, 4]
    assert batch.references[3] == list(CAPTIONS[4])


def test_collate_rejects_mismatched_grids_and_missing_pad_id():
    def sample(image_id, tokens, grid_tokens):
        return Sample(image_id, np.ones((grid_tokens, 2), np.float16), np.zeros((1, 3), np.float16),
                      tokens, ())

    with pytest.raises(DataError, match=r"grid features of one batch differ in shape "
                                        r"\{1: \[4, 2\], 2: \[5, 2\]\}"):
        collate([sample(1, None, 4), sample(2, None, 5)])
    with pytest.raises(DataError, match="collate needs pad_id"):
        collate([sample(1, [2, 3], 4)])


def test_datasets_fail_early_when_features_are_missing(parts):
    split, store, vocab = parts
    split.images[9] = ImageRecord(9, "9.png", ("a dog",))
    with pytest.raises(DataError, match=r"1 of the 5 images of split 'train' have no features "
                                        r"\(first ids: 9\)"):
        CaptionPairs(split, store, vocab, max_len=10)


def test_worker_processes_give_the_same_batches(parts):
    split, store, vocab = parts
    dataset = CaptionPairs(split, store, vocab, max_len=8)
    store[1]  # the parent holds an open handle: workers must open their own
    serial = list(make_loader(dataset, batch_size=4, shuffle=True, seed=3))
    forked = list(make_loader(dataset, batch_size=4, shuffle=True, seed=3, num_workers=2))
    spawned = list(DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn",
                              collate_fn=make_loader(dataset, 4).collate_fn))
    assert [b.image_ids for b in serial] == [b.image_ids for b in forked]
    assert serial[0].image_ids != [1, 1, 2, 3]
    for left, right in zip(serial, forked):
        assert torch.equal(left.grid, right.grid) and torch.equal(left.tokens, right.tokens)
    assert [b.image_ids for b in spawned] == [[1, 1, 2, 3], [4, 4]]
    assert torch.equal(spawned[1].region, collate([dataset[4], dataset[5]], vocab.pad_id).region)


def test_batch_moves_to_a_device(parts):
    split, store, _ = parts
    batch = collate([ImageReferences(split, store)[0]]).to("cpu")
    assert batch.grid.device.type == "cpu" and batch.tokens is None


def test_a_grid_entry_of_another_token_count_read_in_a_worker_is_one_data_error(tmp_path):
    """Batching (collate) in a worker process fails as itself: hin's one-line DataError, not
    torch's "Caught DataError in DataLoader worker process 0" and a traceback."""
    import h5py

    split = Split("val", {image_id: ImageRecord(image_id, f"{image_id}.png", captions)
                          for image_id, captions in CAPTIONS.items()}, str(tmp_path))
    grid, region = write_features(tmp_path, REGION_COUNTS)
    with h5py.File(grid, "a") as handle:
        del handle["3_features"]
        handle["3_features"] = np.ones((GRID_TOKENS * 4, GRID_DIM), np.float16)
    store = FeatureStore(grid, region, max_regions=3, grid_dim=GRID_DIM, region_dim=REGION_DIM)
    loader = make_loader(ImageReferences(split, store), 4, num_workers=1)
    with pytest.raises(DataError) as raised:
        next(iter(loader))
    message = str(raised.value)
    assert "\n" not in message and "Caught" not in message and "worker" not in message
    assert "differ in shape" in message


def test_a_feature_file_held_open_for_writing_is_said_to_be_in_use(tmp_path):
    import subprocess
    import sys

    from hin.data.features import open_hdf5

    grid, _ = write_features(tmp_path, REGION_COUNTS)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import h5py, sys; handle = h5py.File({str(grid)!r}, 'a'); "
                               "print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"open\n"
        with pytest.raises(DataError) as raised:
            open_hdf5(grid)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert str(raised.value).startswith(f"feature file {grid} is in use: another process holds "
                                        "it open for writing")
    assert "truncated" not in str(raised.value)
    open_hdf5(grid).close()                       # once it has finished
