"""Tiny randomly initialised CLIP and DETR checkpoints and small pictures, written on the fly
for the extraction and captioning tests (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_HIDDEN, CLIP_PROJECTION, CLIP_IMAGE, CLIP_PATCH = 32, 16, 32, 8
CLIP_TOKENS = (CLIP_IMAGE // CLIP_PATCH) ** 2
DETR_D_MODEL, DETR_QUERIES = 32, 10
TAUGHT_CAPTION = "a red dog on grass"


def write_tiny_clip(directory: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=CLIP_HIDDEN, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=CLIP_IMAGE,
                              patch_size=CLIP_PATCH, projection_dim=CLIP_PROJECTION)
    CLIPVisionModelWithProjection(config).save_pretrained(directory)
    return directory


def write_tiny_detr(directory: Path) -> Path:
    """DETR with transformers' own (tiny) ResNet backbone: no timm, no torchvision."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessorPil, ResNetConfig

    torch.manual_seed(0)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                            layer_type="basic", out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone,
                        use_pretrained_backbone=False, d_model=DETR_D_MODEL, encoder_layers=1,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=DETR_QUERIES,
                        num_labels=5)
    DetrForObjectDetection(config).save_pretrained(directory)
    DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(directory)
    return directory


def write_pictures(directory: Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """Random RGB pictures named `name` with (height, width) `sizes[name]`."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for name, (height, width) in sizes.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / name)
    return directory


def tiny_hin_config(vocab_size: int, grid_dim: int, region_dim: int, **sizes):
    from hin.config import HINConfig

    values = {"num_layers": 2, "d_model": 32, "num_heads": 4, "d_ff": 64, "dropout": 0.0, **sizes}
    return HINConfig(vocab_size=vocab_size, grid_dim=grid_dim, region_dim=region_dim, **values)


def write_picture_checkpoint(root: Path, pictures: dict[str, tuple[int, int]],
                             hin_sizes: dict | None = None, **extra):
    """Tiny CLIP + DETR, their features of `pictures` (written to root/pictures) in
    root/grid.h5 and root/region.h5, and a tiny HIN taught TAUGHT_CAPTION that records them
    as its extractors (so it captions pictures) -> (checkpoint path, model, vocabulary). `extra` goes into the
    checkpoint too."""
    from hin.checkpoint import save
    from hin.data.familiarity import feature_profile
    from hin.data.features import FeatureStore
    from hin.data.vocab import Vocabulary
    from hin.extract import build_extractor, extract_to_file, list_images, read_attributes
    from hin.model import HIN

    folder = write_pictures(root / "pictures", pictures)
    grid = build_extractor("clip-grid", model=str(write_tiny_clip(root / "clip")), device="cpu")
    region = build_extractor("detr", model=str(write_tiny_detr(root / "detr")), revision=None,
                             device="cpu", threshold=0.0, max_regions=4)
    files = list_images(folder)
    for extractor, out in ((grid, root / "grid.h5"), (region, root / "region.h5")):
        extract_to_file(extractor, files, out, workers=0, progress=False)
    vocab = Vocabulary.from_counts({"a": 9, "red": 8, "dog": 7, "on": 6, "grass": 5}, min_freq=1)
    torch.manual_seed(1)
    model = HIN(tiny_hin_config(len(vocab), CLIP_HIDDEN, DETR_D_MODEL, **(hin_sizes or {})))
    store = FeatureStore(root / "grid.h5", root / "region.h5", grid_dim=CLIP_HIDDEN,
                         region_dim=DETR_D_MODEL)
    _teach(model, store, [f.image_id for f in files],
           [vocab.bos_id, *map(vocab.index, TAUGHT_CAPTION.split()), vocab.eos_id])
    features = {"grid": read_attributes(root / "grid.h5"),
                "region": read_attributes(root / "region.h5")}
    profile = feature_profile([f.image_id for f in files], lambda image_id: store[image_id][0])
    checkpoint = save(root / "tiny.pt", model.eval(), vocabulary=vocab.to_dict(),
                      features=features, feature_profile=profile, **extra)
    return checkpoint, model, vocab


def write_picture_annotations(folder: Path, test_pictures: list[str]) -> None:
    """COCO caption files for the pictures in `folder` (two captions each, annotation ids from
    1000 so that they differ from the image ids) and the Karpathy split files: the named
    pictures are the test split, the others train."""
    from hin.extract import list_images

    content = {"images": [], "annotations": []}
    splits: dict[str, list[int]] = {"train": [], "restval": [], "dev": [], "test": []}
    annotation_id = 1000
    for picture in list_images(folder):
        content["images"].append({"id": picture.image_id, "file_name": picture.path.name})
        for text in (TAUGHT_CAPTION, "a dog"):
            content["annotations"].append({"id": annotation_id, "image_id": picture.image_id,
                                           "caption": text})
            splits["test" if picture.path.name in test_pictures else "train"].append(annotation_id)
            annotation_id += 1
    (folder / "captions_train2014.json").write_text(json.dumps(content))
    (folder / "captions_val2014.json").write_text(json.dumps({"images": [], "annotations": []}))
    for name, ids in splits.items():
        np.save(folder / f"coco_{name}_ids.npy", np.asarray(ids, dtype=np.int64))


def _teach(model, store, image_ids: list[int], caption: list[int], steps: int = 30) -> None:
    """A few Adam steps of teacher forcing towards one caption for every picture, so that the
    tiny model's captions have words (a random one often stops at once)."""
    grid = torch.from_numpy(np.stack([store[i][0] for i in image_ids])).float()
    region = torch.from_numpy(np.stack([store[i][1] for i in image_ids])).float()
    tokens = torch.tensor([caption] * len(image_ids))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logprobs = model.decode(tokens[:, :-1], model.encode(grid, region))
        loss = torch.nn.functional.nll_loss(logprobs.flatten(0, 1), tokens[:, 1:].flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    store.close()
