"""Beam-search throughput at paper size (79.3M parameters, random weights that never emit
<eos>, so every search runs all max_len steps, as the reference's does: the steps decoded
are printed), per precision, and how often bf16 finds the same best caption as fp32 (on
random weights, whose next-word distributions are nearly flat: the hardest case for
agreement; the trained demo model's figure is in benchmarks/README.md). bf16 casts the
weights once, before the timing (`hin.decoding.Ensemble.cast`), as a loaded model does.

With --reference DIR (a checkout of the reference implementation, benchmarks/README.md says
how to get one) the reference's own beam search is timed in the same run, on the same
features and the same weights, as its test.py runs it (fp32, eval, no_grad), and hin's ratios
are to that time; the reference's best beams are compared with hin's fp32 ones (equal work).
Without it, the ratio is to the reference's 0.78 img/s measured on another machine (an Intel
Xeon, 2 cores: beam 5, length 20, batch 10 in 12.9 s).
Usage: python benchmarks/decode.py [--batch-sizes 10 50] [--precision fp32 bf16] [--device cuda]
       [--reference DIR]
"""

from __future__ import annotations

import sys
import time

import torch

import reference_impl
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
REFERENCE_MACHINE = "0.78 img/s measured on an Intel Xeon, another machine"


def main() -> None:
    parser = paper_size_parser(__doc__, beam_search=True)
    parser.add_argument("--reference", metavar="DIR",
                        help="a checkout of the reference implementation: time it in this run")
    args = parser.parse_args()
    models_of = None
    if args.reference is not None:
        if (args.grid_tokens, args.regions) != (reference_impl.GRID_TOKENS, reference_impl.REGIONS):
            sys.exit(f"decode.py: --reference needs --grid-tokens {reference_impl.GRID_TOKENS} "
                     f"--regions {reference_impl.REGIONS}, the shapes the reference hard-codes")
        try:
            models_of = reference_impl.import_models_of(args.reference)
        except reference_impl.ReferenceUnavailable as error:
            sys.exit(f"decode.py: {error}")

    device, model = paper_size_model(args.device)
    model.eval()
    reference = None
    if models_of is not None:
        try:
            reference = reference_impl.reference_model(models_of, model)
        except reference_impl.ReferenceUnavailable as error:
            sys.exit(f"decode.py: --reference {args.reference}: {error}")
    print(f"device: {describe(device)}; model: {model.num_parameters() / 1e6:.1f}M parameters; "
          f"beam {args.beam}, max length {args.max_len}, {args.grid_tokens} grid tokens, "
          f"{args.regions} regions; median (min) of {args.repeats}")
    eos = model.config.eos_id
    for batch in args.batch_sizes:
        grid, region = random_features(batch, args, model.config, device)
        reference_seconds = reference_fastest = reference_cpu = None
        if reference is not None:
            reference_best: list[torch.Tensor] = []

            def run_reference() -> None:
                reference_best[:] = [reference_impl.beam_search(reference, grid, region, args.beam,
                                                                args.max_len, eos)]

            reference_seconds, reference_fastest, reference_cpu = timed(run_reference, device,
                                                                        args.repeats)
            print(f"batch {batch:4d} reference fp32: {reference_seconds:7.3f} s (min {reference_fastest:.3f}, "
                  f"CPU {reference_cpu:.3f} s)  {batch / reference_seconds:8.2f} img/s  all "
                  f"{args.max_len} steps (its loop never stops early)")
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
            if reference_seconds and reference_fastest and reference_cpu:
                versus = (f"  {reference_seconds / median:5.1f}x the reference timed in this run "
                          f"(fastest runs: {reference_fastest / fastest:.1f}x, "
                          f"CPU seconds: {reference_cpu / cpu:.1f}x)")
            elif device.type == "cpu":
                versus = (f"  {batch / median / REFERENCE_IMAGES_PER_SECOND:5.1f}x the reference "
                          f"({REFERENCE_MACHINE})")
            else:
                versus = ""
            # On a CPU the peak is the process's: with --reference it includes the reference's run.
            peak = peak_memory_gib(device) + (" incl. the reference" if reference is not None
                                              and device.type == "cpu" else "")
            print(f"batch {batch:4d} {precision}: {median:7.3f} s (min {fastest:.3f}, CPU {cpu:.3f} s)  "
                  f"{batch / median:8.2f} img/s  steps decoded {best[precision].shape[-1]}/"
                  f"{args.max_len}  peak {peak}{versus}"
                  + (f"  (weights cast once before: {cast_seconds:.2f} s)" if models.cast(precision)[0] is not model
                     else ""))
        if len(best) == 2:
            same = sum(torch.equal(a, b) for a, b in zip(best["fp32"], best["bf16"]))
            print(f"batch {batch:4d}: bf16 finds fp32's best caption for {same}/{batch} images")
        if reference is not None:
            if "fp32" not in best:
                settings = DecodingConfig(beam_size=args.beam, max_len=args.max_len,
                                          precision="fp32")
                best["fp32"] = decode(Ensemble(model), grid, region, settings)[0][:, 0]
            ours = reference_impl.through_eos(best["fp32"], eos)
            theirs = reference_impl.through_eos(reference_best[0], eos)
            same = sum(a == b for a, b in zip(ours, theirs))
            print(f"batch {batch:4d}: the reference's best caption equals hin fp32's for "
                  f"{same}/{batch} images" + ("" if same == batch else
                                             "  (captions differ: check the checkout against the "
                                             "reference's golden outputs, benchmarks/README.md)"))


if __name__ == "__main__":
    main()
