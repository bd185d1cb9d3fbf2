"""`keras.RematScope` around a JaxLayer: the layer's pure program is
rematerialized, while the rng draw, the variable reads and the state update
stay outside it, so training with remat gives the same weights as without."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
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


def stateless_call(params, inputs, training):
    # Depends on the flag (a Python bool here, as always) without rng or state.
    h = jnp.tanh(inputs @ params["w"])
    return (h * (0.5 if training else 1.0)) @ params["v"]


def _train_model_built_in_scope(make_layer, remat: bool):
    def build():
        return keras.Sequential([keras.Input((4,)), make_layer(), keras.layers.Dense(2, kernel_initializer="ones")])

    if remat:
        with keras.RematScope(mode="full"):
            model = build()
    else:
        model = build()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.random.RandomState(2).rand(16, 4).astype("float32")
    y = np.random.RandomState(3).rand(16, 2).astype("float32")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    return [to_numpy(w) for w in model.weights], model, x


def _stateless_layer():
    params = {"w": np.random.RandomState(0).randn(4, 8).astype("float32"),
              "v": np.random.RandomState(1).randn(8, 2).astype("float32")}
    return JaxLayer(stateless_call, params=params)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="Keras's RematScope of a whole model fails in TF graph mode for its own Dense layers too")
def test_model_created_in_remat_scope_trains_like_without_remat():
    """Keras rematerializes the whole model, tracing the `training` flag on jax:
    the layer runs both programs under `jax.lax.cond` and selects the training one."""
    expected, _, _ = _train_model_built_in_scope(_stateless_layer, remat=False)
    got, model, x = _train_model_built_in_scope(_stateless_layer, remat=True)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Inference still takes the inference program (no 0.5 factor).
    layer = model.layers[0]
    params = layer.get_params()
    expected_out = np.tanh(x @ to_numpy(params["w"])) @ to_numpy(params["v"])
    np.testing.assert_allclose(to_numpy(layer(x)), expected_out, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(BACKEND != "jax", reason="only the jax backend traces the flag (torch re-runs the call; see docs/keras-features.md)")
def test_model_created_in_remat_scope_with_state_or_rng_raises_clear_error():
    params = {"w": np.ones((4, 8), "float32"), "v": np.ones((8, 2), "float32")}
    state = {"mean": np.zeros(8, "float32"), "steps": np.zeros((), "int32")}
    for make in (
        lambda: JaxLayer(call_fn, params=params, state=state, seed=3),
        lambda: JaxLayer(lambda params, rng, inputs: jnp.tanh(inputs @ params["w"]) @ params["v"], params=params, seed=3),
    ):
        with pytest.raises(ValueError, match="Create the model outside `keras.RematScope`"):
            _train_model_built_in_scope(make, remat=True)
