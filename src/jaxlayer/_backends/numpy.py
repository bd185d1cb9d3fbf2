"""The NumPy backend bridge: inference only.

Keras's NumPy backend has no autodiff, so the layer runs the compiled program
in JAX and hands NumPy arrays back.
"""

from __future__ import annotations

import jax
import numpy as np

from .base import Bridge


class NumpyBridge(Bridge):
    name = "numpy"

    def run(self, program, params, state, rng, inputs, training):
        if training:
            raise ValueError(
                "JaxLayer cannot train on the `numpy` Keras backend: it has no "
                "automatic differentiation. Use it for inference (`layer(x)`, "
                "`predict`), or set KERAS_BACKEND to `jax`, `tensorflow` or "
                "`torch` to train. Received: training=True"
            )
        to_jax = lambda x: None if x is None else jax.numpy.asarray(x)  # noqa: E731
        outputs, new_state = program.jitted(False)(
            [to_jax(p) for p in params],
            [to_jax(s) for s in state],
            jax.tree.map(to_jax, rng),
            jax.tree.map(to_jax, inputs),
        )
        return jax.tree.map(np.asarray, outputs), [np.asarray(s) for s in new_state]
