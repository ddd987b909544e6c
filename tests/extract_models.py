"""Tiny randomly initialised CLIP and DETR checkpoints and small pictures, written on the fly
for the extraction and captioning tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_HIDDEN, CLIP_PROJECTION, CLIP_IMAGE, CLIP_PATCH = 32, 16, 32, 8
CLIP_TOKENS = (CLIP_IMAGE // CLIP_PATCH) ** 2
DETR_D_MODEL, DETR_QUERIES = 32, 10


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
