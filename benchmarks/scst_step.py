"""Self-critical (SCST) training step at paper size (79.3M parameters, random weights).

One step = the images encoded once with gradients, beam search (beam 5, max length 20,
all 5 beams kept) on that encoding without gradients, CIDEr-D rewards against 5
references per image (training-df table), one teacher-forced pass with gradients over the
5 beams of every image, backward, fused Adam update — exactly
`hin.training.scst.self_critical_loss` as `hin train` runs it, per precision (fp32, bf16
autocast). The random weights never emit <eos> (benchmarks/common.py), so every search runs
all max_len steps, the reference's fixed work; the steps decoded are printed.
Reference implementation (whole beam search under autograd) on the 2-core dev machine,
batch 10: 32 s per step, 22.9 GiB peak; batch 20 does not fit in 24 GiB.
Usage: python benchmarks/scst_step.py [--batch-sizes 10 50] [--precision fp32 bf16] [--device cuda]
"""

from __future__ import annotations

import random

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
from hin.data.vocab import SPECIALS, Vocabulary
from hin.metrics import CiderDTable
from hin.training.optimizer import adam
from hin.training.scst import SelfCritical, self_critical_loss

REFERENCE_SECONDS_BATCH_10 = 32.0
REFERENCES_PER_IMAGE = 5


def reference_table(vocab: Vocabulary, images: int, words: int, seed: int) -> CiderDTable:
    """Five 10-word reference captions per image, drawn from the first `words` words."""
    rng = random.Random(seed)
    vocabulary = vocab.words[len(SPECIALS):len(SPECIALS) + words]
    references = {image: [" ".join(rng.choices(vocabulary, k=10))
                          for _ in range(REFERENCES_PER_IMAGE)] for image in range(images)}
    return CiderDTable.from_references(references, tokenized=True)


def main() -> None:
    args = paper_size_parser(__doc__, beam_search=True).parse_args()

    device, model = paper_size_model(args.device)
    config = model.train().config
    optimizer = adam(model.parameters(), lr=5e-6, betas=(0.9, 0.98))
    vocab = Vocabulary([*SPECIALS, *(f"w{i}" for i in range(len(SPECIALS), config.vocab_size))],
                       [0] * config.vocab_size)
    table = reference_table(vocab, max(args.batch_sizes), words=200, seed=0)
    print(f"device: {describe(device)}; model: {model.num_parameters() / 1e6:.1f}M parameters; "
          f"beam {args.beam} (all beams trained), max length {args.max_len}, "
          f"{args.grid_tokens} grid tokens, {args.regions} regions; median (min) of "
          f"{args.repeats}; peak memory is measured before larger batches run")

    for batch in sorted(args.batch_sizes):
        grid, region = random_features(batch, args, config, device)
        image_ids = list(range(batch))

        steps: list[int] = []

        def reward(beams: torch.Tensor) -> torch.Tensor:
            steps.append(beams.shape[-1])
            captions = [vocab.decode(ids) for ids in beams.flatten(0, 1).tolist()]
            owners = [i for i in image_ids for _ in range(beams.shape[1])]
            return torch.from_numpy(table.score(captions, owners)).view(beams.shape[:2])

        critic = SelfCritical(model, DecodingConfig(beam_size=args.beam, max_len=args.max_len,
                                                    num_captions=args.beam))
        for precision in precisions(args, device):
            def step() -> None:
                loss, _ = self_critical_loss(critic, grid, region, reward, precision=precision)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            reset_peak(device)
            steps.clear()
            median, fastest, cpu = timed(step, device, args.repeats)
            versus = (f"  ({REFERENCE_SECONDS_BATCH_10 / median:.1f}x faster than the "
                      "reference's 32 s)" if batch == 10 and device.type == "cpu" else "")
            print(f"batch {batch:4d} {precision}: {median:7.2f} s/step (min {fastest:.2f}, CPU {cpu:.2f} s)  "
                  f"{batch / median:6.2f} img/s  steps decoded {min(steps)}-{max(steps)}/"
                  f"{args.max_len}  peak {peak_memory_gib(device)}{versus}")


if __name__ == "__main__":
    main()
