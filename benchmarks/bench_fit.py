"""Workload 1: `model.fit` step time vs a hand-written `jax.jit` + optax Adam step.

Same model, data (NumPy batches of 128) and optimizer (Adam 1e-3, softmax
cross-entropy). Each round runs one epoch of `steps` batches for every
variant; the figure is time per step. The pure-JAX loop receives the same
NumPy batches, so both pay the host-to-device copy of each batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from .models import VERSIONS, Unavailable
from .timing import Row, interleaved, stats_row

TARGET = 1.05
STOCK = "stock Keras layers"


def stock_keras(model: str) -> list:
    """The benchmark model built from stock Keras layers (same shapes)."""
    import keras

    if model == "mlp":
        return [
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10),
        ]
    return [
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ]


def make_data(model: str, steps: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (steps * batch, 784) if model == "mlp" else (steps * batch, 28, 28, 1)
    x = rng.random(shape, dtype=np.float32)
    y = rng.integers(0, 10, size=(steps * batch,)).astype(np.int32)
    return x, y


def pure_epoch(apply: Callable, params: Any, x: np.ndarray, y: np.ndarray, batch: int) -> Callable:
    """A zero-argument function running one epoch of a jitted optax Adam step."""
    import jax
    import optax

    optimizer = optax.adam(1e-3)

    def loss_fn(p, xb, yb):
        logits = apply(p, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    # Donating params and optimizer state, as Keras's trainer does.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    params = jax.tree.map(jax.numpy.array, params)  # our own buffers: they are donated
    carry = {"params": params, "opt": optimizer.init(params)}
    steps = len(x) // batch

    def epoch():
        p, opt_state, loss = carry["params"], carry["opt"], None
        for i in range(steps):
            sl = slice(i * batch, (i + 1) * batch)
            p, opt_state, loss = step(p, opt_state, x[sl], y[sl])
        carry["params"], carry["opt"] = p, opt_state
        return loss

    epoch.carry = carry
    return epoch


def keras_epoch(
    layer: Any, x: np.ndarray, y: np.ndarray, batch: int, steps_per_execution: int = 1
) -> Callable:
    import keras

    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    model = keras.Sequential([keras.Input(x.shape[1:]), *layers])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )

    def epoch():
        history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return history.history["loss"][-1]

    epoch.model = model
    return epoch


def run(args) -> list[Row]:
    rows: list[Row] = []
    models = ["mlp"] if args.quick else ["mlp", "cnn"]
    names = ["plain"] if args.quick else list(VERSIONS)
    steps = args.fit_steps
    for model in models:
        x, y = make_data(model, steps, args.batch)
        for name in names:
            workload = f"fit step {model} ({name})"
            try:
                version = VERSIONS[name](model)
            except Unavailable as why:
                rows.append(Row(workload, "jaxlayer", None, note=str(why)))
                continue
            variants: dict[str, Callable] = {
                "pure jax+optax": pure_epoch(version.apply, version.params, x, y, args.batch)
            }
            notes: dict[str, str] = {}
            for label, make in (
                ("jaxlayer", version.make_ours),
                (version.keras_name, version.make_keras),
            ):
                if make is None:
                    continue
                try:
                    variants[label] = keras_epoch(make(), x, y, args.batch)
                except Unavailable as why:
                    notes[label] = str(why)
                except Exception as error:  # noqa: BLE001 - reported in the table
                    notes[label] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            if name == "plain":
                # The same model from stock Keras layers: the trainer's own floor.
                variants[STOCK] = keras_epoch(stock_keras(model), x, y, args.batch)
            if not args.quick and "jaxlayer" in variants and name == "plain":
                variants["jaxlayer spe=8"] = keras_epoch(version.make_ours(), x, y, args.batch, 8)
            stats = interleaved(variants, rounds=args.rounds, calls=1, warmup=1)
            per_step = {k: type(v)([s / steps for s in v.samples]) for k, v in stats.items()}
            base = per_step["pure jax+optax"]
            rows.append(stats_row(workload, "pure jax+optax", base))
            for label in variants:
                if label == "pure jax+optax":
                    continue
                target = TARGET if label.startswith("jaxlayer") else None
                row = stats_row(workload, label, per_step[label], base, "pure", target)
                if label == "jaxlayer":
                    for other, short in ((version.keras_name, "keras.JaxLayer"), (STOCK, "stock")):
                        if other in per_step:
                            vs = per_step[label].median / per_step[other].median
                            row.note += f" ours/{short}={vs:.2f}x"
                rows.append(row)
            for label, note in notes.items():
                if label == "jaxlayer":
                    note = "(adapter) " + note
                rows.append(Row(workload, label, None, note=note))
    return rows
