"""Workload 3: `model.predict_on_batch` vs the jitted pure function, NumPy in and out.

The 6-layer MLP (784-256x5-10) on a NumPy batch; the baseline is
`np.asarray(jax.jit(apply)(params, x_numpy))`.
"""

from __future__ import annotations

import numpy as np

from . import models
from .timing import Row, interleaved, stats_row

TARGET = 1.2


def _stock(sizes):
    import keras

    return [keras.layers.Dense(n, activation="relu") for n in sizes[1:-1]] + [
        keras.layers.Dense(sizes[-1])
    ]


def run(args) -> list[Row]:
    import jax
    import keras

    from jaxlayer import JaxLayer

    rng = np.random.default_rng(0)
    x = rng.random((args.predict_batch, 784), dtype=np.float32)
    sizes = [784] + [256] * 5 + [10]
    init_fn = models.mlp_init(sizes)
    params = init_fn(jax.random.key(0), jax.numpy.asarray(x[:2]))
    jitted = jax.jit(models.mlp_apply)

    variants = {"jitted pure fn": lambda: np.asarray(jitted(params, x))}
    notes = {}
    for label, make in (
        ("jaxlayer", lambda: JaxLayer(models.mlp_apply, init_fn)),
        ("keras.layers.JaxLayer", lambda: keras.layers.JaxLayer(models.mlp_apply, init_fn)),
        ("stock Keras layers", lambda: _stock(sizes)),
    ):
        try:
            made = make()
            made = made if isinstance(made, list) else [made]
            model = keras.Sequential([keras.Input((784,)), *made])
            model.predict_on_batch(x)
            variants[label] = lambda model=model: model.predict_on_batch(x)
        except Exception as error:  # noqa: BLE001 - reported in the table
            notes[label] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    stats = interleaved(variants, rounds=args.rounds, calls=args.eager_calls, warmup=3)
    workload = f"predict_on_batch 6-layer MLP b{args.predict_batch}"
    base = stats.pop("jitted pure fn")
    rows = [stats_row(workload, "jitted pure fn", base)]
    for label, s in stats.items():
        rows.append(
            stats_row(workload, label, s, base, "jitted", TARGET if label == "jaxlayer" else None)
        )
    rows += [Row(workload, label, None, note=note) for label, note in notes.items()]
    return rows
