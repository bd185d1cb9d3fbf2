"""Reloading a saved demo model and comparing its predictions with the originals.

`check_in_fresh_process` runs `python -m jaxlayer.cli _reload-check` in a new
interpreter (same KERAS_BACKEND), which calls `reload_and_compare`. The demo
saves its model portably, so that interpreter may be one where only keras and
jax are installed (`make demo` uses `.venv-min`): the file loads without the
model's framework or code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PREDICT_BATCH_SIZE = 128
PORTABLE = "portable"  # the framework argument for a portable file: register nothing


def predict(model, inputs: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(inputs, batch_size=PREDICT_BATCH_SIZE, verbose=0))


def compare(expected: np.ndarray, received: np.ndarray) -> tuple[bool, str]:
    """(identical?, one-line description)."""
    if expected.shape != received.shape:
        return False, f"shapes differ: {expected.shape} vs {received.shape}"
    if np.array_equal(expected, received):
        return True, "predictions identical"
    difference = float(np.max(np.abs(expected.astype("float64") - received.astype("float64"))))
    return False, f"predictions differ (max abs difference {difference:.3g})"


def reload_and_compare(
    model_path: str | os.PathLike, data_path: str | os.PathLike, framework: str
) -> tuple[bool, str]:
    """Loads `model_path` and compares its predictions on the saved inputs with the saved ones."""
    import keras

    import jaxlayer  # noqa: F401 - registers the layer classes

    if framework != PORTABLE:
        from . import models

        models.load(framework).register()

    data = np.load(data_path)
    model = keras.models.load_model(model_path)
    return compare(data["expected"], predict(model, data["inputs"]))


def check_in_fresh_process(
    model_path: Path,
    inputs: np.ndarray,
    expected: np.ndarray,
    backend: str,
    framework: str,
    python: str | None = None,
) -> tuple[bool, str]:
    """Runs `reload_and_compare` in a new interpreter (`python`, default this
    one) with KERAS_BACKEND=`backend`."""
    with tempfile.TemporaryDirectory(prefix="jaxlayer-demo-") as tmp:
        data_path = Path(tmp) / "predictions.npz"
        np.savez(data_path, inputs=inputs, expected=expected)
        env = dict(os.environ, KERAS_BACKEND=backend)
        command = [python or sys.executable, "-m", "jaxlayer.cli", "_reload-check"]
        command += [str(model_path), str(data_path), framework]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return True, lines[-1]
    tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
    return False, "fresh process failed (exit code {}):\n    {}".format(
        done.returncode, "\n    ".join(tail)
    )
