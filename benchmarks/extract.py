"""Feature extraction throughput (images/s), random weights, end to end through `hin extract`'s
pipeline: JPEG decoding in loader workers, preparation, the model, fp16 HDF5 parts and merge.

Configs: tiny CLIP / tiny DETR (what the tests use) and real-size shapes: CLIP ViT-L/14 at
224 px (256 x 1024 grid + 768 global) and DETR-R50 (transformers' ResNet-50, 100 queries,
shorter side 800). Pictures are 640x480 JPEGs like COCO's. With several --precision values,
each is timed (median of --repeats runs) and its stored features are compared with the first's.
Usage: python benchmarks/extract.py [--device cuda] [--images 16] [--configs vit-l14]
       [--precision fp32 bf16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from common import describe
from hin.config import EXTRACTION_PRECISIONS
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


def stored_features(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as handle:
        return {name: handle[name][()].astype(np.float32) for name in handle
                if name.endswith(("_features", "_global"))}


def compare(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> str:
    """Max |difference| per kind of dataset, with the reference's max |value| for scale, over the
    images whose datasets have the same shape (DETR may keep other regions)."""
    shown = []
    for kind in sorted({name.split("_", 1)[1] for name in reference}):
        names = [name for name in reference if name.endswith("_" + kind)]
        same = [name for name in names if reference[name].shape == other[name].shape
                and reference[name].size]
        if same:
            difference = max(float(np.abs(reference[n] - other[n]).max()) for n in same)
            scale = max(float(np.abs(reference[n]).max()) for n in same)
            shown.append(f"{kind}: max |diff| {difference:.4g} (max |value| {scale:.4g})")
        if len(same) < len(names):
            shown.append(f"{kind}: {len(names) - len(same)} of {len(names)} images not compared "
                         "(other or no regions kept)")
    return "; ".join(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=EXTRACTION_PRECISIONS,
                        help="one or more; features of each are compared with the first's")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per precision (median)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    print(f"device: {describe(device)}; {args.images} pictures 640x480, batch {args.batch_size}, "
          f"{args.workers} loader workers, {args.repeats} timed run(s) per precision")
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
            reference = None
            for precision in args.precision:
                extractor = build_extractor(extractor_name, model=str(weights), device=str(device),
                                            precision=precision, **options)
                extractor([extractor.preprocess(Image.open(files[0].path).convert("RGB"))])  # warm-up
                rates = []
                for repeat in range(args.repeats):
                    out = root / f"{name}-{precision}-{repeat}.h5"
                    started = time.perf_counter()
                    report = extract_to_file(extractor, files, out, batch_size=args.batch_size,
                                             workers=args.workers, progress=False)
                    rates.append(report.written / (time.perf_counter() - started))
                parameters = sum(p.numel() for p in extractor.model.parameters()) / 1e6
                runs = ", ".join(f"{rate:.2f}" for rate in rates)
                print(f"{name:10s} {precision:4s} ({parameters:8.3f}M parameters): "
                      f"{statistics.median(rates):8.2f} images/s median of [{runs}]")
                features = stored_features(out)
                if reference is None:
                    reference = features
                else:
                    print(f"{'':10s} {precision} vs {args.precision[0]}: {compare(reference, features)}")
                del extractor


if __name__ == "__main__":
    main()
