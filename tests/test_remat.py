"""`keras.RematScope` around a JaxLayer: the layer's pure program is
rematerialized, while the rng draw, the variable reads and the state update
stay outside it, so training with remat gives the same weights as without."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import to_numpy
from jaxlayer import JaxLayer

pytestmark = pytest.mark.needs_training


def call_fn(params, state, rng, inputs, training):
    h = jnp.tanh(inputs @ params["w"])
    if training:
        h = h * jax.random.bernoulli(rng, 0.9, h.shape) / 0.9
        state = {"mean": 0.9 * state["mean"] + 0.1 * h.mean(0), "steps": state["steps"] + 1}
    return (h - state["mean"]) @ params["v"], state


def _train(remat_mode):
    params = {"w": np.random.RandomState(0).randn(4, 8).astype("float32"),
              "v": np.random.RandomState(1).randn(8, 2).astype("float32")}
    state = {"mean": np.zeros(8, "float32"), "steps": np.zeros((), "int32")}
    if remat_mode:
        with keras.RematScope(mode=remat_mode):
            layer = JaxLayer(call_fn, params=params, state=state, seed=3)
    else:
        layer = JaxLayer(call_fn, params=params, state=state, seed=3)
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(2, kernel_initializer="ones")])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.random.RandomState(2).rand(16, 4).astype("float32")
    y = np.random.RandomState(3).rand(16, 2).astype("float32")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    return [to_numpy(w) for w in model.weights], layer


@pytest.mark.parametrize("mode", ["full", "larger_than"])
def test_remat_scope_trains_to_the_same_weights(mode):
    expected, _ = _train(None)
    got, layer = _train(mode)
    assert layer._remat_mode is not None
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(layer.get_state()["steps"]) == 4  # one state update per step, not per recomputation
