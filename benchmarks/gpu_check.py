"""GPU check: every CUDA path of hin in one run, for a bare CUDA machine (about 8 minutes on
one H200 at most).

Runs from the source tree with only torch, numpy, h5py, pyyaml, tqdm and pillow installed
(pycocoevalcap, spaCy, Java and pytest may be absent; nothing is downloaded):

    PYTHONPATH=src python3 benchmarks/gpu_check.py OUT [--device cuda] [--quick]

Prints and writes to OUT (`gpu_check.md`, a table, and `gpu_check.json`): the device; the
suite's `cuda`-marked tests (when pytest is importable); paper-size XE steps (pairs and
grouped, fp32 and bf16) with captions/s and peak memory; an SCST step; beam search over 50
and 500 images in fp32 and bf16 with images/s (<eos> made unreachable, so that every search
runs all 20 steps); fp32 beams on the device identical to the CPU's and to the reference
implementation's (the golden test model, paper-size features); `torchrun --nproc-per-node 1`
training a few steps on a small synthetic set (NCCL on CUDA, gloo on CPU); and a resumed run
equal bit for bit to an uninterrupted one. Exit status 0 when every check passes.
`--device cpu --quick` runs the same code paths small (what `make test` runs).

Without spaCy, the synthetic captions (lower-case words, spaces and commas) are tokenised by
splitting words from punctuation, which is what spaCy gives for them
(tests/project/test_gpu_check.py checks it); the report says which tokenizer ran.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_TEST_FILES = ("test_cuda.py", "extract/vinvl/test_vinvl_golden.py")   # under tests/: files with cuda tests
sys.path.insert(0, str(ROOT / "src"))

from common import peak_memory_gib, reset_peak, timed  # noqa: E402
from hin import checkpoint, synth  # noqa: E402
from hin.config import DecodingConfig, HINConfig, RunConfig  # noqa: E402
from hin.data import vocab as vocab_module  # noqa: E402
from hin.decoding import Ensemble, decode  # noqa: E402
from hin.devices import autocast, resolve_device  # noqa: E402
from hin.extract.shapes import GRID_DIM, REGION_DIM  # noqa: E402
from hin.files import write_json, write_text  # noqa: E402
from hin.metrics import CiderDTable  # noqa: E402
from hin.model import HIN  # noqa: E402
from hin.training import run, rundir  # noqa: E402
from hin.training.optimizer import adam  # noqa: E402
from hin.training.scst import SelfCritical, self_critical_loss  # noqa: E402
from hin.training.xe import next_token_nll  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "hin_reference_small.pt"
TIME_LIMIT_S = 480
_WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass
class Row:
    section: str
    setting: str
    result: str
    ok: bool = True


@dataclass(frozen=True)
class Sizes:
    """Paper size on a GPU; `--quick` shrinks every batch and the model, not the code path."""

    model: HINConfig
    xe_captions: int
    scst_images: int
    beam_batches: tuple[int, ...]
    repeats: int
    train_model: tuple[str, ...]

    @classmethod
    def choose(cls, quick: bool) -> Sizes:
        if quick:
            return cls(HINConfig(num_layers=1, d_model=64, num_heads=4, d_ff=128), 10, 2, (2, 4), 1,
                       ("model.num_layers=1", "model.d_model=32", "model.num_heads=4",
                        "model.d_ff=64"))
        return cls(HINConfig(), 50, 50, (50, 500), 3, ())


def spacy_or_splitter() -> str:
    """The tokenizer training will use: spaCy when installed, else the word/punctuation
    splitter, which equals spaCy on the synthetic captions (see the module docstring)."""
    if importlib.util.find_spec("spacy") is not None:
        return "spaCy"
    vocab_module._spacy_tokenizer = lambda: split_words
    return "words split from punctuation (spaCy absent)"


def split_words(text: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(text=token) for token in _WORDS.findall(text)]


# -- measuring -------------------------------------------------------------------------------

def measured_row(section: str, setting: str, run: Callable[[], object], device: torch.device,
                 sizes: Sizes, count: int, unit: str) -> Row:
    """Median seconds of `run` (after a warm-up), `count` per second, peak memory."""
    reset_peak(device)
    seconds = timed(run, device, sizes.repeats)[0]
    return Row(section, setting, f"{seconds:.3f} s, {count / seconds:,.1f} {unit}/s, "
                                 f"{peak_memory_gib(device)}")


def optimiser_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def features(batch: int, config: HINConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(batch, 256, config.grid_dim, device=device),
            torch.randn(batch, 50, config.region_dim, device=device))


# -- the checks ------------------------------------------------------------------------------

def device_rows(device: torch.device, tokenizer: str) -> list[Row]:
    rows = [Row("device", "torch", f"{torch.__version__} (CUDA {torch.version.cuda}), Python "
                f"{platform.python_version()}")]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rows.append(Row("device", str(device), f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                        f"compute capability {props.major}.{props.minor}, bf16 "
                        f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}"))
    else:
        rows.append(Row("device", "cpu", f"{platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads"))
    present = {name: importlib.util.find_spec(name) is not None
               for name in ("pytest", "spacy", "pycocoevalcap")}
    rows.append(Row("device", "packages", ", ".join(f"{name} {'yes' if here else 'no'}"
                                                      for name, here in present.items())
                    + f", java {'yes' if shutil.which('java') else 'no'}; tokenizer: {tokenizer}"))
    return rows


def cuda_test_rows() -> list[Row]:
    """The suite's cuda-marked tests, when pytest is importable here."""
    if importlib.util.find_spec("pytest") is None:
        return [Row("cuda tests", "pytest -m cuda", "not run: pytest is not installed", True)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    files = [str(ROOT / "tests" / name) for name in CUDA_TEST_FILES]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                             *files], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)
    summary = (result.stdout.strip().splitlines() or ["no output"])[-1]
    return [Row("cuda tests", f"pytest -m cuda {' '.join(f'tests/{name}' for name in CUDA_TEST_FILES)}",
                summary, result.returncode == 0)]


def xe_rows(device: torch.device, sizes: Sizes, precisions: list[str]) -> list[Row]:
    torch.manual_seed(0)
    model = HIN(sizes.model).to(device).train()
    config = model.config
    optimizer = adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    tokens = torch.randint(4, config.vocab_size, (sizes.xe_captions, 20), device=device)
    tokens[:, 0], tokens[:, -1] = config.bos_id, config.eos_id
    rows = []
    for layout, k in (("pairs", 1), ("grouped k=5", 5)):
        grid, region = features(sizes.xe_captions // k, config, device)
        shaped = tokens.view(-1, k, tokens.shape[-1]) if k > 1 else tokens
        for precision in precisions:
            def step() -> None:
                with autocast(device, precision):
                    total, count = next_token_nll(model, grid, region, shaped, config.pad_id)
                optimiser_step(optimizer, total / count)

            rows.append(measured_row("XE step", f"{sizes.xe_captions} captions, {layout}, {precision}",
                                     step, device, sizes, sizes.xe_captions, "captions"))
    return rows


def scst_rows(device: torch.device, sizes: Sizes, precisions: list[str]) -> list[Row]:
    """One SCST step: beams, the CIDEr-D reward from a document-frequency table, backward."""
    torch.manual_seed(0)
    model = HIN(sizes.model).to(device).train()
    optimizer = adam(model.parameters(), lr=1e-5, betas=(0.9, 0.999))
    grid, region = features(sizes.scst_images, model.config, device)
    generator = torch.Generator().manual_seed(0)
    references = {i: [" ".join(map(str, torch.randint(4, 40, (10,), generator=generator).tolist()))
                      for _ in range(5)] for i in range(sizes.scst_images)}
    table = CiderDTable.from_references(references, tokenized=True)

    def reward(beams: torch.Tensor) -> torch.Tensor:
        captions = [" ".join(map(str, row)) for row in beams.flatten(0, 1).tolist()]
        owners = [i for i in range(beams.shape[0]) for _ in range(beams.shape[1])]
        return torch.from_numpy(table.score(captions, owners)).view(beams.shape[:2])

    def step(precision: str) -> Callable[[], None]:
        return lambda: optimiser_step(optimizer, self_critical_loss(
            SelfCritical(model, DecodingConfig(beam_size=5, max_len=20, num_captions=5)), grid, region,
            reward, precision=precision)[0])

    return [measured_row("SCST step", f"{sizes.scst_images} images x 5 beams, {precision}",
                         step(precision), device, sizes, sizes.scst_images, "images")
            for precision in precisions]


def beam_rows(device: torch.device, sizes: Sizes, precisions: list[str]) -> list[Row]:
    torch.manual_seed(0)
    model = HIN(sizes.model).to(device).eval()
    with torch.no_grad():
        model.decoder.head.weight[model.config.eos_id] = 0.0    # <eos> never wins: 20 steps
    rows = []
    for batch in sizes.beam_batches:
        grid, region = features(batch, model.config, device)
        for precision in precisions:
            steps = []
            settings = DecodingConfig(beam_size=5, max_len=20, precision=precision)
            models = Ensemble(model)     # as hin decodes: cast once, kept

            def run() -> None:
                ids, _ = decode(models, grid, region, settings)
                steps.append(ids.shape[-1])

            row = measured_row("beam search", f"batch {batch}, beam 5, {precision}", run, device,
                               sizes, batch, "images")
            rows.append(replace(row, result=f"{row.result}, {steps[-1]} steps", ok=steps[-1] == 20))
    return rows


def same_beams_rows(device: torch.device) -> list[Row]:
    """fp32 beams on `device` = beams on the CPU = the reference implementation's beams."""
    golden = torch.load(GOLDEN, weights_only=True)
    reference = golden["config"]
    model = checkpoint.import_reference(golden["state_dicts"][0], num_heads=reference["h"])
    grid, region = golden["grid"].float(), golden["region"].float()
    settings = DecodingConfig(beam_size=reference["beam_size"], max_len=reference["beam_max_len"],
                              num_captions=3)
    on_cpu, _ = decode(model, grid, region, settings)
    on_device, _ = decode(model.to(device), grid.to(device), region.to(device), settings)

    def up_to_eos(ids: torch.Tensor) -> list[list[list[int]]]:
        return [[beam[:beam.index(reference["eos_idx"]) + 1] if reference["eos_idx"] in beam
                 else beam for beam in image] for image in ids.tolist()]

    same_cpu = up_to_eos(on_device.cpu()) == up_to_eos(on_cpu)
    same_reference = up_to_eos(on_device.cpu()) == up_to_eos(golden["beam_seq"])
    return [Row("fp32 beams", f"{len(grid)} images x 3 beams, golden model, {device} vs cpu",
                "identical" if same_cpu else "DIFFERENT", same_cpu),
            Row("fp32 beams", f"{device} vs the reference implementation's",
                "identical" if same_reference else "DIFFERENT", same_reference)]


def training_overrides(data: Path, run_dir: Path, device: torch.device, sizes: Sizes,
                       steps: int) -> list[str]:
    return [f"run_dir={run_dir}", f"data.annotations={data}",
            f"data.grid_features={data / synth.GRID_FILE}",
            f"data.region_features={data / synth.REGION_FILE}",
            f"data.vocabulary={data / synth.VOCAB_FILE}", "data.num_workers=0",
            f"model.grid_dim={GRID_DIM}", f"model.region_dim={REGION_DIM}", *sizes.train_model,
            "train.batch_size=10", "train.val_batch_size=10", "train.val_full_metrics=false",
            "train.tensorboard=false", "train.log_every=1", "train.epochs=3",
            f"train.max_steps={steps}", f"train.device={device}", "train.precision=auto"]


def torchrun_rows(data: Path, out: Path, device: torch.device, sizes: Sizes) -> list[Row]:
    """`torchrun --nproc-per-node 1` runs `--train-worker`: six steps, one validation."""
    run_dir = out / "torchrun"
    overrides = training_overrides(data, run_dir, device, sizes, steps=6)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
         str(Path(__file__).resolve()), str(out), "--train-worker", json.dumps(overrides)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    report = run_dir / "worker.json"
    if result.returncode != 0 or not report.is_file():
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [Row("torchrun", "--nproc-per-node 1", f"FAILED (exit {result.returncode}): {tail}", False)]
    worker = json.loads(report.read_text())
    expected = "nccl" if device.type == "cuda" else "gloo"
    ok = worker["backend"] == expected and worker["step"] == 6 and worker["validated"]
    return [Row("torchrun", "--nproc-per-node 1, 6 steps, batch 10",
                f"backend {worker['backend']}, world size {worker['world_size']}, step "
                f"{worker['step']}, validation CIDEr-D {worker['validated']}", ok)]


def train_worker(overrides: list[str]) -> None:
    """One torchrun process: train, then record the backend and where the run ended."""
    import torch.distributed as dist

    spacy_or_splitter()
    config = RunConfig.load(None, overrides)
    trainer = run.build_trainer(config, progress=False)
    backend = dist.get_backend() if dist.is_initialized() else "none"
    world_size = trainer.context.world_size
    try:
        trainer.fit()
    finally:
        trainer.close()
    log = [json.loads(line) for line in (Path(config.run_dir) / "log.jsonl").read_text().splitlines()]
    epochs = [record for record in log if record.get("event") == "epoch"]
    write_json(Path(config.run_dir) / "worker.json", {
        "backend": backend, "world_size": world_size, "step": trainer.progress.step,
        "validated": round(epochs[0]["val"]["CIDEr-D"], 4) if epochs else None})


def resume_rows(data: Path, out: Path, device: torch.device, sizes: Sizes) -> list[Row]:
    """Six steps straight vs three, then resumed to six: equal weights, bit for bit; and the
    torchrun group of one (when it ran) equal to the single process."""
    straight, resumed = out / "straight", out / "resumed"
    run.start(RunConfig.load(None, training_overrides(data, straight, device, sizes, 6)), progress=False)
    run.start(RunConfig.load(None, training_overrides(data, resumed, device, sizes, 3)), progress=False)
    run.resume(resumed, ["train.max_steps=6"], progress=False)
    rows = [Row("resume", f"6 steps vs 3 + resumed 3 on {device}", *same_weights(straight, resumed))]
    if (out / "torchrun" / rundir.LAST).is_file():
        rows.append(Row("torchrun", "group of one vs a single process, 6 steps",
                        *same_weights(straight, out / "torchrun")))
    return rows


def same_weights(first_run: Path, second_run: Path) -> tuple[str, bool]:
    """(what differs, whether the two runs' last.pt weights are equal bit for bit)."""
    first = checkpoint.read_hin(first_run / rundir.LAST)["model"]
    second = checkpoint.read_hin(second_run / rundir.LAST)["model"]
    differ = [name for name in first if not torch.equal(first[name], second[name])]
    if not differ:
        return "bit-exact", True
    largest = max(float((first[n].float() - second[n].float()).abs().max()) for n in differ)
    return f"{len(differ)} of {len(first)} tensors differ (largest {largest:.3g})", False


# -- the report ------------------------------------------------------------------------------

def run_checks(out: Path, device: torch.device, quick: bool) -> list[Row]:
    sizes = Sizes.choose(quick)
    tokenizer = spacy_or_splitter()
    precisions = ["fp32", "bf16"]
    started = time.perf_counter()
    rows = device_rows(device, tokenizer)
    with tempfile.TemporaryDirectory(prefix="hin-gpu-check-") as scratch:
        data = Path(scratch) / "synth"
        synth.generate(data, seed=0, train=8, val=4, test=1, min_freq=1, progress=False)
        sections: list[tuple[str, Callable[[], list[Row]]]] = [
            ("cuda tests", cuda_test_rows),
            ("XE step", lambda: xe_rows(device, sizes, precisions)),
            ("SCST step", lambda: scst_rows(device, sizes, precisions)),
            ("beam search", lambda: beam_rows(device, sizes, precisions)),
            ("fp32 beams", lambda: same_beams_rows(device)),
            ("torchrun", lambda: torchrun_rows(data, Path(scratch), device, sizes)),
            ("resume", lambda: resume_rows(data, Path(scratch), device, sizes)),
        ]
        for name, section in sections:
            begun = time.perf_counter()
            try:
                found = section()
            except Exception as error:      # a failed check is reported; the others still run
                found = [Row(name, "", f"FAILED: {type(error).__name__}: {error}", False)]
            for row in found:
                print(f"{row.section:12s} {row.setting:45s} {row.result}"
                      + ("" if row.ok else "   <-- FAILED"), flush=True)
            rows.extend(found)
            print(f"  ({name}: {time.perf_counter() - begun:.0f} s)", flush=True)
    total = time.perf_counter() - started
    rows.append(Row("total", "wall time", f"{total:.0f} s (limit {TIME_LIMIT_S} s)",
                    quick or total <= TIME_LIMIT_S))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| check | setting | result | ok |", "|---|---|---|---|"]
    lines += [f"| {r.section} | {r.setting} | {r.result} | {'yes' if r.ok else '**no**'} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: the same code paths")
    parser.add_argument("--train-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_worker:
        train_worker(json.loads(args.train_worker))
        return 0
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run_checks(out, device, args.quick)
    write_text(out / "gpu_check.md", markdown(rows))
    write_json(out / "gpu_check.json", {"device": str(device), "quick": args.quick,
                                         "ok": all(r.ok for r in rows),
                                         "rows": [vars(r) for r in rows]})
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed; wrote {out / 'gpu_check.md'} "
          f"and {out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
