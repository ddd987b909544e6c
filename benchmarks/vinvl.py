"""VinVL X152-C4 detector speed and memory on one picture, fp32 and bf16, per stage.

The full-size model (148M values, the published structure) is built on the meta device and
materialised with random weights: He-normal convolutions, frozen BN statistics calibrated on
the picture itself (each layer's input mean and variance, as the golden fixtures' weights were
made), RPN and class logits scaled so that objectness and class scores are not saturated, and
the Detectron cell anchors. Speed depends only on the shapes; the bf16 figures say how many of
fp32's detections bf16 keeps (same proposal box within 1 px) and how far their features are.
Usage: python benchmarks/vinvl.py [--size 640x480] [--precision fp32 bf16] [--repeats 1]
       [--small]   (the golden fixtures' small widths: seconds, for checking the script)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from common import describe, peak_memory_gib
from hin.devices import resolve_device
from hin.extract.vinvl.backbone import FrozenBatchNorm2d, VinVLShape
from hin.extract.vinvl.detector import Detection, Scored, VinVLDetector
from hin.extract.vinvl.loading import build_on_meta
from hin.extract.vinvl.preprocess import network_input, prepare

SMALL = VinVLShape(width_per_group=1, stem_out=16, res2_out=8, class_embedding=16,
                   attribute_hidden=32)
# Detectron's cell anchors for sizes 32..512 and ratios 0.5, 1, 2 on a 16-pixel window (what
# the published checkpoint's buffer holds): row 5 r + k, ratio r, size k.
CELL_ANCHORS = [
    (-15, -4, 30, 19), (-38, -16, 53, 31), (-84, -40, 99, 55), (-176, -88, 191, 103),
    (-360, -184, 375, 199), (-8, -8, 23, 23), (-24, -24, 39, 39), (-56, -56, 71, 71),
    (-120, -120, 135, 135), (-248, -248, 263, 263), (-3, -14, 18, 29), (-14, -36, 29, 51),
    (-36, -80, 51, 95), (-80, -168, 95, 183), (-168, -344, 183, 359)]
BACKGROUND_BIAS = 4.0
# Random residual branches at full gain make a 152-layer network chaotic (bf16 rounding grows
# to ~50% of res4); trained ResNets' branches are small next to the trunk.
RESIDUAL_GAIN = 0.2
OBJECTNESS_SCALE = 0.2      # RPN logits of std ~2: objectness spread out, not saturated at 1


def synthetic_picture(width: int, height: int) -> Image.Image:
    """Gradients, blocks and noise: something for every anchor size to respond to."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                       (x + y) % 256], axis=-1).astype(np.uint8)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        pixels[y0:y0 + rng.integers(10, height // 2), x0:x0 + rng.integers(10, width // 2)] = (
            rng.integers(0, 256, 3))
    pixels[: height // 4, : width // 4] = rng.integers(0, 256, (height // 4, width // 4, 3))
    return Image.fromarray(pixels)


def random_detector(shape: VinVLShape, picture: np.ndarray) -> VinVLDetector:
    """Built on meta, materialised on the CPU with random weights, BN calibrated on `picture`."""
    torch.manual_seed(0)
    model = build_on_meta(shape).to_empty(device="cpu").eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = module.weight[0].numel()
            torch.nn.init.normal_(module.weight, std=(2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, FrozenBatchNorm2d):
            module.weight.copy_(1 + 0.1 * torch.randn_like(module.weight))
            module.bias.copy_(0.1 * torch.randn_like(module.bias))
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight)
    for name, module in model.named_modules():
        if name.endswith(".bn3"):
            module.weight.mul_(RESIDUAL_GAIN)
    model.rpn.anchor_generator.cell_anchors.get_buffer("0").copy_(torch.tensor(CELL_ANCHORS))
    with torch.no_grad():
        model.rpn.head.cls_logits.weight.mul_(OBJECTNESS_SCALE)
        model.roi_heads.box.predictor.cls_score.bias[0] = BACKGROUND_BIAS
    _calibrate(model, picture)
    return model


def _calibrate(model: VinVLDetector, picture: np.ndarray) -> None:
    """Each frozen BN takes its input's per-channel mean and variance (one fp32 pass)."""
    def take_statistics(module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        variance = x.var(dim=(0, 2, 3))
        module.running_var.copy_(variance.clamp(min=0.1 * variance.mean().item() + 1e-6))

    hooks = [module.register_forward_pre_hook(take_statistics) for module in model.modules()
             if isinstance(module, FrozenBatchNorm2d)]
    with torch.no_grad():
        model.score(picture, 1, 1)
    for hook in hooks:
        hook.remove()


def staged(model: VinVLDetector, picture: np.ndarray, height: int, width: int,
           bf16: bool, device: torch.device) -> tuple[dict[str, float], Detection]:
    """One detection with each stage timed (the steps of VinVLDetector.score, then select)."""
    times: dict[str, float] = {}
    layout = torch.channels_last if bf16 else torch.contiguous_format
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                enabled=bf16):
        start = time.perf_counter()
        image = network_input(picture).to(device)[None].contiguous(memory_format=layout)
        res4 = model.backbone(image)
        times["backbone"] = time.perf_counter() - start
        start = time.perf_counter()
        rpn = model.rpn(res4, *image.shape[-2:])
        times["rpn"] = time.perf_counter() - start
        start = time.perf_counter()
        features = model.roi_heads.box.feature_extractor(res4[0], rpn.proposals, layout)
        logits = model.roi_heads.box.predictor(features)
        times[f"head ({len(rpn.proposals)} proposals)"] = time.perf_counter() - start
    start = time.perf_counter()
    scored = Scored(res4.float(), rpn, features, logits, logits.softmax(dim=1), height, width,
                    (image.shape[-2], image.shape[-1]), bf16)
    found = model.select(scored)
    times["post-processing"] = time.perf_counter() - start
    return times, found


def compare(reference: Detection, other: Detection) -> str:
    """Share of the reference's detections that `other` keeps (same proposal box within
    1 px) and how far the kept ones' features are."""
    distance = torch.cdist(reference.boxes_resized, other.boxes_resized, p=float("inf"))
    matched = distance.min(dim=1)
    kept = matched.values <= 1.0
    if not kept.any():
        return f"boxes kept 0/{len(kept)}"
    ours = reference.features[kept]
    theirs = other.features[matched.indices[kept]]
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=1)
    scale = ours.abs().max().item()
    return (f"boxes kept {int(kept.sum())}/{len(kept)} ({kept.float().mean().item():.1%}); "
            f"features of kept boxes: max |diff| {(ours - theirs).abs().max().item():.4g} "
            f"(largest value {scale:.4g}), min cosine {cosine.min().item():.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x480", help="picture WIDTHxHEIGHT")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--small", "--quick", action="store_true",
                        help="the golden fixtures' small widths (checks the script in seconds)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    width, height = (int(side) for side in args.size.lower().split("x"))
    prepared = prepare(synthetic_picture(width, height))
    shape = SMALL if args.small else VinVLShape()
    print(f"device: {describe(device)}")
    print(f"model: {'small-width (fixtures)' if args.small else 'full-size X152-C4'}, random "
          f"weights; picture {width}x{height} -> network input "
          f"{prepared.pixels.shape[1]}x{prepared.pixels.shape[0]}")
    model = random_detector(shape, prepared.pixels).to(device)
    print(f"after building: {peak_memory_gib(device)}")
    results: dict[str, Detection] = {}
    for precision in sorted(set(args.precision), key=["fp32", "bf16"].index):
        bf16 = precision == "bf16"
        if bf16:
            model.prepare_bf16()          # after fp32, which runs the original's layout
        staged(model, prepared.pixels, height, width, bf16, device)       # warm-up
        runs = [staged(model, prepared.pixels, height, width, bf16, device)
                for _ in range(args.repeats)]
        stages = {name: sorted(run[0][name] for run in runs)[len(runs) // 2]
                  for name in runs[0][0]}
        results[precision] = runs[-1][1]
        timing = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())
        print(f"{precision}: {sum(stages.values()):.2f} s per picture ({timing}); "
              f"{len(results[precision].kept.scores)} detections; {peak_memory_gib(device)}")
    if "fp32" in results:
        for precision, found in results.items():
            if precision != "fp32":
                print(f"{precision} vs fp32: {compare(results['fp32'], found)}")


if __name__ == "__main__":
    main()
