"""Cross-entropy training step at paper size (79.3M parameters, random weights and features).

One step = teacher-forced forward, next-token NLL ignoring <pad>, backward, Adam update.
Reference implementation on the 2-core dev machine: batch 10: 2.1 s per step.
Usage: python benchmarks/train_step.py [--batch-sizes 10 50] [--device cuda --bf16]
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from common import (
    describe,
    paper_size_model,
    paper_size_parser,
    peak_memory_gib,
    random_features,
    reset_peak,
    timed,
)

REFERENCE_SECONDS_BATCH_10 = 2.1


def main() -> None:
    parser = paper_size_parser(__doc__)
    parser.add_argument("--caption-tokens", type=int, default=20,
                        help="padded caption length incl. <bos>/<eos> (COCO batches: ~20)")
    args = parser.parse_args()

    device, model = paper_size_model(args.device)
    config = model.train().config
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    print(f"device: {describe(device)}; model: {model.num_parameters() / 1e6:.1f}M parameters; "
          f"{args.caption_tokens} caption tokens, {args.grid_tokens} grid tokens, "
          f"{args.regions} regions; peak memory is measured before larger batches run")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())
    for batch in sorted(args.batch_sizes):
        grid, region = random_features(batch, args, config, device)
        tokens = torch.randint(4, config.vocab_size, (batch, args.caption_tokens), device=device)
        tokens[:, 0] = config.bos_id
        tokens[:, -1] = config.eos_id
        reset_peak(device)

        def step() -> None:
            with autocast:
                logprobs = model(grid, region, tokens[:, :-1])
            loss = F.nll_loss(logprobs.flatten(0, 1).float(), tokens[:, 1:].flatten(),
                              ignore_index=config.pad_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = timed(step, device, args.repeats)
        versus = (f"  ({REFERENCE_SECONDS_BATCH_10 / seconds:.1f}x the reference's 2.1 s)"
                  if batch == 10 and device.type == "cpu" else "")
        print(f"batch {batch:4d}: {seconds:7.3f} s/step  {batch / seconds:7.2f} pairs/s  "
              f"peak {peak_memory_gib(device)}{versus}")


if __name__ == "__main__":
    main()
