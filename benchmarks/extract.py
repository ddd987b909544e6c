"""Feature extraction throughput (images/s), random weights, end to end through `hin extract`'s
pipeline: JPEG decoding in loader workers, preparation, the model, fp16 HDF5 parts and merge.

Configs: tiny CLIP / tiny DETR (what the tests use) and real-size shapes: CLIP ViT-L/14 at
224 px (256 x 1024 grid + 768 global) and DETR-R50 (transformers' ResNet-50, 100 queries,
shorter side 800). Pictures are 640x480 JPEGs like COCO's.
Usage: python benchmarks/extract.py [--device cuda] [--images 16] [--configs tiny-clip ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import describe
from hin.devices import resolve_device
from hin.extract import build_extractor, extract_to_file, list_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from extract_models import write_tiny_clip, write_tiny_detr  # noqa: E402


def write_vit_l14(directory: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=224, patch_size=14,
                              projection_dim=768)
    CLIPVisionModelWithProjection(config).save_pretrained(directory)
    return directory


def write_detr_r50(directory: Path) -> Path:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessorPil, ResNetConfig

    backbone = ResNetConfig(out_features=["stage4"])          # ResNet-50 shapes
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone,
                        use_pretrained_backbone=False)
    DetrForObjectDetection(config).save_pretrained(directory)
    DetrImageProcessorPil().save_pretrained(directory)       # shorter side 800, longer <= 1333
    return directory


CONFIGS = {
    "tiny-clip": ("clip-grid", write_tiny_clip, {}),
    "tiny-detr": ("detr", write_tiny_detr, {"revision": None}),
    "vit-l14": ("clip-grid", write_vit_l14, {}),
    "detr-r50": ("detr", write_detr_r50, {"revision": None}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    print(f"device: {describe(device)}; {args.images} pictures 640x480, batch {args.batch_size}, "
          f"{args.workers} loader workers, dtype {args.dtype}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        pictures = root / "pictures"
        pictures.mkdir()
        rng = np.random.default_rng(0)
        for image_id in range(1, args.images + 1):
            pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(pictures / f"{image_id}.jpg", quality=90)
        files = list_images(pictures)
        for name in args.configs:
            extractor_name, write, options = CONFIGS[name]
            torch.manual_seed(0)
            weights = write(root / name)
            extractor = build_extractor(extractor_name, model=str(weights), device=str(device),
                                        dtype=args.dtype, **options)
            extractor([extractor.preprocess(Image.open(files[0].path).convert("RGB"))])  # warm-up
            started = time.perf_counter()
            report = extract_to_file(extractor, files, root / f"{name}.h5",
                                     batch_size=args.batch_size, workers=args.workers,
                                     progress=False)
            seconds = time.perf_counter() - started
            parameters = sum(p.numel() for p in extractor.model.parameters()) / 1e6
            print(f"{name:10s} ({parameters:8.3f}M parameters): {report.written} images in "
                  f"{seconds:7.2f} s = {report.written / seconds:8.2f} images/s")


if __name__ == "__main__":
    main()
