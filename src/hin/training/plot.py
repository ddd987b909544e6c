"""`hin plot RUN_DIR`: training loss, learning rate and validation metrics of a run, drawn
from its `log.jsonl` to one PNG.

Reads only the log: never loads a checkpoint, a model or data, so it works on a run that is
still training. Needs matplotlib (`pip install 'hin[plot]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hin.training.runlog import read_log

PLOT_FILE = "curves.png"


def current_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the run as it now stands: steps and epochs logged after the checkpoint
    a resume went back to were redone, so the first logging of them is dropped."""
    kept: list[dict[str, Any]] = []
    for record in records:
        if record["event"] == "resume":
            kept = [r for r in kept if r.get("step", 0) <= record["step"]]
        kept.append(record)
    return kept


def _series(records: list[dict[str, Any]], event: str, key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in records
              if r["event"] == event and isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw run_dir's curves to `out` (default run_dir/curves.png) and return its path."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("hin plot needs matplotlib: pip install 'hin[plot]' "
                          "(or pip install matplotlib)") from error
    matplotlib.use("Agg")
    from matplotlib import pyplot

    records = current_history(read_log(run_dir))
    if not any(r["event"] in ("step", "epoch") for r in records):
        raise ValueError(f"{run_dir} has no logged steps or epochs yet; plot again after "
                         "the first train.log_every steps")
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
        val_axes.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", label=name)
    best = [r for r in epochs if r.get("best")]
    if best and "CIDEr-D" in metrics:
        val_axes.plot([r["step"] for r in best], [100 * r["val"]["CIDEr-D"] for r in best],
                      "k*", markersize=10, label="best (validation CIDEr-D)")
    val_axes.set_ylabel("validation score ×100")
    val_axes.set_xlabel("optimiser step")
    if metrics:
        val_axes.legend(loc="lower right", fontsize="small")

    figure.suptitle(f"{Path(run_dir).resolve().name}: training curves")
    figure.tight_layout()
    path = Path(out) if out else Path(run_dir) / PLOT_FILE
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path
