"""Beam-search throughput at paper size (79.3M parameters, random weights).

Reference implementation on the 2-core dev machine: beam 5, length 20, batch 10: 12.9 s
(0.78 img/s); batch 50: ~0.7 img/s.   Usage: python benchmarks/decode.py [--device cuda]
"""

from __future__ import annotations

import contextlib

import torch

from common import (
    describe,
    paper_size_model,
    paper_size_parser,
    peak_memory_gib,
    random_features,
    reset_peak,
    timed,
)
from hin.decoding import beam_search


def main() -> None:
    args = paper_size_parser(__doc__, beam_search=True).parse_args()

    device, model = paper_size_model(args.device)
    model.eval()
    print(f"device: {describe(device)}; model: {model.num_parameters() / 1e6:.1f}M parameters; "
          f"beam {args.beam}, max length {args.max_len}, "
          f"{args.grid_tokens} grid tokens, {args.regions} regions")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())
    for batch in args.batch_sizes:
        grid, region = random_features(batch, args, model.config, device)
        reset_peak(device)

        def run() -> None:
            with autocast:
                seqs, _ = beam_search(model, grid, region, beam_size=args.beam,
                                      max_len=args.max_len)
            assert seqs.shape[-1] == args.max_len, "random weights should never stop early"

        seconds = timed(run, device, args.repeats)
        print(f"batch {batch:4d}: {seconds:7.3f} s  {batch / seconds:8.2f} img/s  "
              f"peak {peak_memory_gib(device)}")


if __name__ == "__main__":
    main()
