"""`hin plot RUN_DIR`: training loss, learning rate and validation metrics of a run, drawn
from its `log.jsonl` to one PNG.

Reads only the log: never loads a checkpoint, a model or data, so it works on a run that is
still training. Needs matplotlib (`pip install 'hin-caption[plot]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hin.errors import MissingExtraError, UsageError, pip_install
from hin.files import atomic_write, check_writable
from hin.training.runlog import read_log

PLOT_FILE = "curves.png"
SELECTION_METRIC = "CIDEr-D"


def current_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the run as it now stands: steps and epochs logged after the checkpoint
    a resume went back to were redone, so the first logging of them is dropped (a restart
    goes back to step 0)."""
    kept: list[dict[str, Any]] = []
    for record in records:
        if record["event"] in ("resume", "restart"):
            kept = [r for r in kept if r.get("step", 0) <= record["step"]]
        kept.append(record)
    return kept


def stage_starts(records: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(first step, stage) of every stage after the first, e.g. [(1200, "scst")] for a log
    holding cross-entropy then SCST steps."""
    starts: list[tuple[int, str]] = []
    stage = None
    for record in records:
        if record["event"] in ("step", "epoch") and record.get("stage") != stage:
            if stage is not None:
                starts.append((record["step"], record["stage"]))
            stage = record.get("stage")
    return starts


def best_epoch(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch record whose weights best.pt holds: the last one flagged best."""
    flagged = [r for r in records if r["event"] == "epoch" and r.get("best")]
    return flagged[-1] if flagged else None


def _series(records: list[dict[str, Any]], event: str, key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in records
              if r["event"] == event and isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw run_dir's curves to `out` (default run_dir/curves.png) and return its path."""
    try:
        import matplotlib
    except ImportError as error:
        raise MissingExtraError(f"hin plot needs matplotlib: {pip_install('plot')} "
                                "(or pip install matplotlib)") from error
    matplotlib.use("Agg")
    from matplotlib import pyplot

    records = current_history(read_log(run_dir))
    if not any(r["event"] in ("step", "epoch") for r in records):
        raise UsageError(f"{run_dir} has no logged steps or epochs yet; plot again after "
                         "the first train.log_every steps")
    path = check_writable(Path(out) if out else Path(run_dir) / PLOT_FILE, "--out" if out else "the plot")
    epochs = [r for r in records if r["event"] == "epoch"]
    metrics = sorted({name for r in epochs for name in r.get("val", {})})

    figure, (loss_axes, lr_axes, val_axes) = pyplot.subplots(3, 1, figsize=(8, 10),
                                                             sharex=True)
    loss_axes.plot(*_series(records, "step", "loss"), label="training loss (logged steps)",
                   linewidth=0.8)
    loss_axes.plot(*_series(records, "epoch", "train_loss"), "o-", label="epoch mean loss")
    steps, rewards = _series(records, "step", "reward")
    if rewards:
        reward_axes = loss_axes.twinx()
        reward_axes.plot(steps, rewards, color="tab:green", linewidth=0.8,
                         label="SCST mean reward")
        reward_axes.set_ylabel("reward (CIDEr-D)")
        reward_axes.legend(loc="upper right")
    loss_axes.set_ylabel("loss")
    loss_axes.legend(loc="upper left")

    lr_axes.plot(*_series(records, "step", "lr"), drawstyle="steps-post")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_yscale("log")

    for name in metrics:
        points = [(r["step"], r["val"][name]) for r in epochs if name in r.get("val", {})]
        selected = name == SELECTION_METRIC
        val_axes.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", label=name,
                      linewidth=2.5 if selected else 1, zorder=3 if selected else 2,
                      markersize=6 if selected else 3)
    best = best_epoch(epochs)
    if best is not None and SELECTION_METRIC in best.get("val", {}):
        val_axes.plot(best["step"], 100 * best["val"][SELECTION_METRIC], "k*", markersize=14,
                      zorder=4, label=f"best.pt: epoch {best['epoch']} "
                                      f"(validation {SELECTION_METRIC})")
    for step, stage in stage_starts(records):
        for axes in (loss_axes, lr_axes, val_axes):
            axes.axvline(step, color="grey", linestyle="--", linewidth=1)
        loss_axes.annotate(f"{stage} starts ", (step, 0.5), xycoords=("data", "axes fraction"),
                           rotation=90, ha="right", va="center", color="grey")
    val_axes.set_ylabel("validation score ×100")
    val_axes.set_xlabel("optimiser step")
    if metrics:
        val_axes.legend(loc="best", fontsize="small")

    figure.suptitle(f"{Path(run_dir).resolve().name}: training curves")
    figure.tight_layout()
    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png", dpi=100)
    pyplot.close(figure)
    return path
