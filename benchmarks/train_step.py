"""Cross-entropy training step at paper size (79.3M parameters, random weights and features).

One step = teacher-forced forward, next-token NLL ignoring <pad>, backward, fused Adam
update — `hin.training.xe.next_token_nll` and `hin.training.optimizer.adam` as `hin train`
runs them — for each layout x precision:
pairs (every caption with its own image, the reference's layout) and grouped (k captions
per image, the encoder run once per image); fp32 and bf16 autocast. Batch sizes count
captions, so the per-caption throughputs compare directly.
Reference implementation on the 2-core dev machine: 10 pairs: 2.1 s per step (4.8 captions/s).
Usage: python benchmarks/train_step.py [--batch-sizes 10 50] [--precision fp32 bf16]
       [--captions-per-image 5] [--device cuda]
"""

from __future__ import annotations

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
from hin.devices import autocast
from hin.training.optimizer import adam
from hin.training.xe import next_token_nll

REFERENCE_SECONDS_BATCH_10 = 2.1


def main() -> None:
    parser = paper_size_parser(__doc__)
    parser.add_argument("--caption-tokens", type=int, default=20,
                        help="padded caption length incl. <bos>/<eos> (COCO batches: ~20)")
    parser.add_argument("--captions-per-image", type=int, default=5,
                        help="k of the grouped layout (COCO images have 5-7 captions)")
    args = parser.parse_args()

    device, model = paper_size_model(args.device)
    config = model.train().config
    optimizer = adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    print(f"device: {describe(device)}; model: {model.num_parameters() / 1e6:.1f}M parameters; "
          f"{args.caption_tokens} caption tokens, {args.grid_tokens} grid tokens, "
          f"{args.regions} regions; median (min) of {args.repeats}; peak memory is measured "
          "before larger batches run")
    reference_rate = 10 / REFERENCE_SECONDS_BATCH_10
    for batch in sorted(args.batch_sizes):
        tokens = torch.randint(4, config.vocab_size, (batch, args.caption_tokens), device=device)
        tokens[:, 0] = config.bos_id
        tokens[:, -1] = config.eos_id
        layouts = {"pairs": 1, f"grouped k={args.captions_per_image}": args.captions_per_image}
        for layout, k in layouts.items():
            grid, region = random_features(batch // k, args, config, device)
            shaped = tokens.view(batch // k, k, -1) if k > 1 else tokens
            for precision in precisions(args, device):
                reset_peak(device)

                def step() -> None:
                    with autocast(device, precision):
                        total, count = next_token_nll(model, grid, region, shaped, config.pad_id)
                    optimizer.zero_grad(set_to_none=True)
                    (total / count).backward()
                    optimizer.step()

                median, fastest, cpu = timed(step, device, args.repeats)
                versus = (f"  {batch / median / reference_rate:5.1f}x the reference per caption"
                          if device.type == "cpu" else "")
                print(f"batch {batch:4d} {layout:12s} {precision}: {median:7.3f} s/step "
                      f"(min {fastest:.3f}, CPU {cpu:.3f} s)  {batch / median:7.2f} captions/s  "
                      f"peak {peak_memory_gib(device)}{versus}")


if __name__ == "__main__":
    main()
