"""Workload 2: eager `layer(x)` vs the jitted pure function.

A 6-layer MLP (784-256x5-10, batch 32) as a plain function, and a 20-layer
256-wide Flax Linen MLP. Inputs are JAX arrays already on the device; every
call waits for its result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import models
from .models import Unavailable
from .timing import Row, interleaved, stats_row

TARGET = 1.3


def _full_keras_call_layer_class():
    import keras

    from jaxlayer import JaxLayer

    class FullKerasCall(JaxLayer):
        def __call__(self, *args, **kwargs):
            if not self.built:
                return super().__call__(*args, **kwargs)
            return keras.layers.Layer.__call__(self, *args, **kwargs)

    return FullKerasCall


def _FullKerasCall(*args):
    return _full_keras_call_layer_class()(*args)


def _measure(
    workload: str, apply, params, x, layers: dict[str, Callable], rounds: int, calls: int
) -> list[Row]:
    import jax

    jitted = jax.jit(apply)
    variants = {"jitted pure fn": lambda: jitted(params, x)}
    rows, notes = [], {}
    for label, make in layers.items():
        try:
            layer = make()
            layer(x)  # build
            variants[label] = lambda layer=layer: layer(x)
        except Unavailable as why:
            notes[label] = str(why)
        except Exception as error:  # noqa: BLE001 - reported in the table
            notes[label] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    stats = interleaved(variants, rounds=rounds, calls=calls, warmup=3)
    base = stats.pop("jitted pure fn")
    rows.append(stats_row(workload, "jitted pure fn", base))
    for label, s in stats.items():
        target = TARGET if label.startswith("jaxlayer") and "__call__" not in label else None
        rows.append(stats_row(workload, label, s, base, "jitted", target))
    for label, note in notes.items():
        rows.append(Row(workload, label, None, note=note))
    return rows


def run(args) -> list[Row]:
    import jax.numpy as jnp
    import keras

    from jaxlayer import JaxLayer

    rows = []
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((32, 784), dtype=np.float32))

    sizes = [784] + [256] * 5 + [10]
    init_fn = models.mlp_init(sizes)
    params = init_fn(models.jax.random.key(0), x)
    rows += _measure(
        "eager 6-layer MLP b32",
        models.mlp_apply,
        params,
        x,
        {
            "jaxlayer": lambda: JaxLayer(models.mlp_apply, init_fn),
            # The same layer through Keras's full `Layer.__call__` (the path
            # before the direct eager path was added): shows what it saves.
            "jaxlayer via Layer.__call__": lambda: _FullKerasCall(models.mlp_apply, init_fn),
            "keras.layers.JaxLayer": lambda: keras.layers.JaxLayer(models.mlp_apply, init_fn),
        },
        args.rounds,
        args.eager_calls,
    )

    try:
        module = models.flax_module("mlp", [784] + [256] * 19 + [10])
    except ImportError as error:
        rows.append(Row("eager 20-layer Flax MLP b32", "jaxlayer", None, note=f"flax: {error}"))
        return rows
    flax_params = module.init(models.jax.random.key(0), x)["params"]

    def flax_apply(params, inputs):
        return module.apply({"params": params}, inputs)

    def flax_init(rng, inputs):
        return module.init(rng, inputs)["params"]

    rows += _measure(
        "eager 20-layer Flax MLP b32",
        flax_apply,
        flax_params,
        x,
        {
            "jaxlayer (apply fn)": lambda: JaxLayer(flax_apply, flax_init),
            "jaxlayer (adapter)": lambda: models._adapter("FlaxLayer")(module),
            "keras.layers.FlaxLayer": lambda: keras.layers.FlaxLayer(module),
        },
        args.rounds,
        max(args.eager_calls // 4, 5),
    )
    return rows
