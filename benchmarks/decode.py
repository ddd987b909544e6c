"""Beam-search throughput at paper size (79.3M parameters, random weights that never emit
<eos>, so every search runs all max_len steps, as the reference's does: the steps decoded
are printed), per precision, and how often bf16 finds the same best caption as fp32 (on
random weights, whose next-word distributions are nearly flat: the hardest case for
agreement; the trained demo model's figure is in benchmarks/README.md). bf16 casts the
weights once, before the timing (`hin.decoding.Ensemble.cast`), as a loaded model does.

Reference implementation on the 2-core dev machine: beam 5, length 20, batch 10: 12.9 s
(0.78 img/s); batch 50: ~0.7 img/s.
Usage: python benchmarks/decode.py [--batch-sizes 10 50] [--precision fp32 bf16] [--device cuda]
"""

from __future__ import annotations

import time

import torch

from common import (
    describe,
    paper_size_model,
    paper_size_parser,
    peak_memory_gib,
    precisions,
    random_features,
    reset_peak,
    timed,
)
from hin.config import DecodingConfig
from hin.decoding import Ensemble, decode

REFERENCE_IMAGES_PER_SECOND = 0.78


def main() -> None:
    args = paper_size_parser(__doc__, beam_search=True).parse_args()

    device, model = paper_size_model(args.device)
    model.eval()
    print(f"device: {describe(device)}; model: {model.num_parameters() / 1e6:.1f}M parameters; "
          f"beam {args.beam}, max length {args.max_len}, {args.grid_tokens} grid tokens, "
          f"{args.regions} regions; median (min) of {args.repeats}")
    for batch in args.batch_sizes:
        grid, region = random_features(batch, args, model.config, device)
        best: dict[str, torch.Tensor] = {}
        for precision in precisions(args, device):
            settings = DecodingConfig(beam_size=args.beam, max_len=args.max_len,
                                      precision=precision)
            start = time.perf_counter()
            models = Ensemble(model)
            models.cast(precision)
            cast_seconds = time.perf_counter() - start
            reset_peak(device)

            def run() -> None:
                best[precision] = decode(models, grid, region, settings)[0][:, 0]

            median, fastest, cpu = timed(run, device, args.repeats)
            versus = (f"  {batch / median / REFERENCE_IMAGES_PER_SECOND:5.1f}x the reference"
                      if device.type == "cpu" else "")
            print(f"batch {batch:4d} {precision}: {median:7.3f} s (min {fastest:.3f}, CPU {cpu:.3f} s)  "
                  f"{batch / median:8.2f} img/s  steps decoded {best[precision].shape[-1]}/"
                  f"{args.max_len}  peak {peak_memory_gib(device)}{versus}"
                  + (f"  (weights cast once before: {cast_seconds:.2f} s)" if models.cast(precision)[0] is not model
                     else ""))
        if len(best) == 2:
            same = sum(torch.equal(a, b) for a, b in zip(best["fp32"], best["bf16"]))
            print(f"batch {batch:4d}: bf16 finds fp32's best caption for {same}/{batch} images")


if __name__ == "__main__":
    main()
