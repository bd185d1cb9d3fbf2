"""`run_demo`: train one framework's digits CNN with `model.fit`, save, reload, report."""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import _processes, models
from ._data import load_digits
from ._deps import BACKEND_REQUIREMENTS, MATPLOTLIB, SKLEARN, check
from ._reload import PORTABLE, check_in_fresh_process, compare, predict
from ._report import plot_history, write_metrics

MODEL_FILE = "model.keras"
PLOT_FILE = "training.png"
METRICS_FILE = "metrics.json"
# Keras's signatures type `verbose` from its default ("auto"), so pass 0 untyped.
QUIET: dict[str, Any] = {"verbose": 0}


def check_requirements(framework: str, backend: str) -> None:
    """Raises `MissingDependency` (one line with the pip extra) before any work."""
    check((SKLEARN, MATPLOTLIB, *models.load(framework).REQUIRES), f"the {framework} demo")
    check(BACKEND_REQUIREMENTS.get(backend, ()), f"the demo on the Keras {backend} backend")


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def run_demo(
    framework: str = "haiku",
    epochs: int = 10,
    out_dir: str | Path = "demo-out",
    *,
    seed: int = 0,
    min_accuracy: float = 0.95,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    fresh_process_check: bool = True,
    reload_python: str | None = None,
    stream: TextIO | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Trains, evaluates, saves and reloads the demo model in the active Keras backend.

    Args:
        framework: `"jax"`, `"haiku"`, `"flax"`, `"nnx"` or `"equinox"`.
        epochs: training epochs (`model.fit`, batch `batch_size`, Adam).
        out_dir: where `model.keras`, `training.png` and `metrics.json` go.
        seed: seeds the initial weights, the dropout keys and the data split.
        min_accuracy: held-out accuracy the run must reach to pass.
        batch_size: training batch size.
        learning_rate: Adam's initial learning rate (cosine decay to 5%).
        fresh_process_check: also reload the saved model in a new interpreter.
        reload_python: the interpreter for that check (default: this one); the
            model is saved portably, so one with only keras and jax will do.
        stream: where the summary is printed (default: stdout).
        processes: with N > 1, this process is one of N started by
            `jaxlayer demo --processes N` (the `KERAS_DISTRIBUTION_*`
            variables say which): it trains data-parallel on its shard of
            every global batch of `batch_size`; process 0 reports and writes
            the files.

    Returns:
        The metrics written to `metrics.json`. `metrics["passed"]` is True when
        held-out accuracy reaches `min_accuracy` and every reload gives
        identical predictions.

    Raises:
        MissingDependency: an optional package is missing (one-line message
            with the pip extra).
    """
    import keras

    stream = stream or sys.stdout

    def say(line: str = "") -> None:
        print(line, file=stream, flush=True)

    backend = keras.config.backend()
    check_requirements(framework, backend)
    model_module = models.load(framework)
    index = _processes.start(processes) if processes > 1 else 0
    scratch = tempfile.TemporaryDirectory(prefix="jaxlayer-demo-process-")
    if index != 0:
        stream, out_dir = open(os.devnull, "w"), scratch.name  # noqa: SIM115 - process exits
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, plot_path, metrics_path = (
        out_dir / MODEL_FILE,
        out_dir / PLOT_FILE,
        out_dir / METRICS_FILE,
    )

    # Python's `random` seeds Keras's global seed generator (used for the
    # initial weights) when it is first created; NumPy's seeds fit's shuffling.
    # (keras.utils.set_random_seed would also import TensorFlow when present.)
    random.seed(seed)
    np.random.seed(seed)
    data = load_digits(seed=seed)
    if processes > 1:
        data = type(data)(*(_processes.shard(a, index, processes) for a in data))
        batch_size //= processes  # per process: the global batch stays `batch_size`
    validation_split = 0.1
    # As Keras splits: the last `validation_split` of the training arrays.
    n_validation = len(data.x_train) - math.ceil(len(data.x_train) * (1 - validation_split))
    steps_per_epoch = math.ceil((len(data.x_train) - n_validation) / batch_size)

    layer = model_module.make_layer(seed)
    layer.save_as = "portable"  # model.keras loads without the framework or this code
    model = keras.Sequential(
        [keras.Input(data.x_train.shape[1:]), layer],
        name=f"digits_{framework}",
    )
    # Cosine decay settles the weights in the last epochs, so the final
    # accuracy does not depend on where the last noisy step landed. (Typed Any:
    # Keras's signature says a float, and takes schedules too.)
    schedule: Any = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=epochs * steps_per_epoch, alpha=0.05
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))

    say(f"jaxlayer demo: {framework} on the Keras {backend} backend")
    if processes > 1:
        say(f"  processes: {processes} (jax.distributed, DataParallel; each feeds its shard of every batch)")
    say(f"  model: {model_module.DESCRIPTION}")
    say(f"  parameters: {trainable:,} trainable, {non_trainable:,} non-trainable")
    say(
        f"  data: scikit-learn digits (8x8), {processes * (len(data.x_train) - n_validation)} train / "
        f"{processes * n_validation} validation / {processes * len(data.x_test)} held-out"
    )
    timer = _epoch_timer()
    history = model.fit(
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=batch_size,
        validation_split=validation_split,
        callbacks=[timer],
        verbose="auto",  # the progress bar
    ).history
    history = {key: [float(v) for v in values] for key, values in history.items()}
    test_loss, test_accuracy = (
        float(v) for v in model.evaluate(data.x_test, data.y_test, **QUIET)
    )

    held_out = data.x_test
    if processes > 1:
        held_out, predictions, same_ok, same_message = _reload_after_processes(
            model, model_path, seed, index, processes, test_accuracy, scratch.name
        )
        if index != 0 or held_out is None or predictions is None:
            return {"passed": test_accuracy >= min_accuracy, "process": index}
    else:
        predictions = predict(model, data.x_test)
        model.save(model_path)
        reloaded = keras.models.load_model(model_path)
        same_ok, same_message = compare(predictions, predict(reloaded, data.x_test))
    if fresh_process_check:
        fresh_ok, fresh_message = check_in_fresh_process(
            model_path, held_out, predictions, backend, PORTABLE, reload_python
        )
    else:
        fresh_ok, fresh_message = None, "skipped"

    title = f"jaxlayer demo: {framework} on Keras {backend}, held-out accuracy {test_accuracy:.3f}"
    plot_history(history, plot_path, title)

    accurate = test_accuracy >= min_accuracy
    passed = accurate and same_ok and fresh_ok is not False
    metrics = {
        "framework": framework,
        "backend": backend,
        "model": model_module.DESCRIPTION,
        "parameters": {"trainable": trainable, "non_trainable": non_trainable},
        "data": {
            "train": processes * (len(data.x_train) - n_validation),
            "validation": processes * n_validation,
            "held_out": processes * len(data.x_test),
        },
        "processes": processes,
        "epochs": epochs,
        "batch_size": batch_size * processes,
        "learning_rate": learning_rate,
        "seed": seed,
        "history": history,
        "epoch_seconds": timer.seconds,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "min_accuracy": min_accuracy,
        "reload": {
            "portable": True,
            "same_process_identical": same_ok,
            "fresh_process_identical": fresh_ok,
            "fresh_process_python": reload_python or sys.executable,
        },
        "passed": passed,
        "files": {"model": str(model_path), "plot": str(plot_path), "metrics": str(metrics_path)},
        "versions": _versions(),
    }
    write_metrics(metrics, metrics_path)

    seconds = timer.seconds
    if len(seconds) > 1:
        per_epoch = (
            f"{np.mean(seconds[1:]):.2f} s (first epoch {seconds[0]:.2f} s, includes compilation)"
        )
    else:
        per_epoch = f"{seconds[0]:.2f} s (includes compilation)" if seconds else "n/a"
    mark = f"ok, >= {min_accuracy:.2f}" if accurate else f"BELOW the required {min_accuracy:.2f}"
    say()
    say("Summary")
    say(f"  framework / backend        {framework} / {backend}")
    if processes > 1:
        say(f"  processes                  {processes}, data-parallel (jax.distributed on 127.0.0.1)")
    say(f"  parameters                 {trainable:,} trainable, {non_trainable:,} non-trainable")
    say(f"  time per epoch             {per_epoch}")
    say(f"  held-out accuracy          {test_accuracy:.4f} on {processes * len(data.x_test)} digits ({mark})")
    say(f"  saved model                {model_path}")
    say(f"  reload, same process       {same_message}")
    where = f"KERAS_BACKEND={backend}, {reload_python or sys.executable}"
    say(f"  reload, fresh process      {fresh_message} ({where})")
    say(f"  training curves            {plot_path}")
    say(f"  metrics                    {metrics_path}")
    say("PASSED" if passed else "FAILED")
    return metrics


def _reload_after_processes(model, model_path, seed, index, processes, test_accuracy, scratch_dir):
    """Saves from every process; process 0 reloads the file on its own device.

    `model.predict` cannot run across processes (Keras fetches the global
    outputs, for its own layers too), so process 0 leaves the distribution,
    loads the saved file, and checks that the loaded model's accuracy on all
    held-out digits equals the accuracy the processes measured together.
    Returns (held-out inputs, process 0's predictions, ok, message).
    """
    import keras

    _processes.save_from_every_process(model, model_path, index, scratch_dir)
    if index != 0:
        return None, None, True, ""
    keras.distribution.set_distribution(None)
    full = load_digits(seed=seed)
    x_test = _processes.union_of_shards(full.x_test, processes)
    y_test = _processes.union_of_shards(full.y_test, processes)
    reloaded = keras.models.load_model(model_path)
    predictions = predict(reloaded, x_test)
    accuracy = float(np.mean(np.argmax(predictions, axis=-1) == y_test))
    same = abs(accuracy - test_accuracy) < 0.5 / len(y_test)
    verdict = "equals" if same else "DIFFERS from"
    message = (
        f"held-out accuracy {accuracy:.4f} on one device {verdict} the {processes} processes' "
        f"{test_accuracy:.4f}"
    )
    return x_test, predictions, same, message


def _versions() -> dict[str, str]:
    import jax
    import keras

    import jaxlayer

    return {"jaxlayer": jaxlayer.__version__, "keras": keras.__version__, "jax": jax.__version__}
