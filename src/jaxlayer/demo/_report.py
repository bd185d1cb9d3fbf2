"""What the demo writes: `training.png` (loss and accuracy curves) and `metrics.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._deps import MATPLOTLIB, require


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Loss and accuracy, train and validation, side by side (Agg, no display)."""
    require(MATPLOTLIB, "The demo's training plot")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = range(1, len(history["loss"]) + 1)
    for axes, metric, label in (
        (loss_axes, "loss", "loss"),
        (accuracy_axes, "accuracy", "accuracy"),
    ):
        axes.plot(epochs, history[metric], "o-", label=f"train {label}")
        if f"val_{metric}" in history:
            axes.plot(epochs, history[f"val_{metric}"], "s--", label=f"validation {label}")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    accuracy_axes.set_ylim(top=1.0)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
