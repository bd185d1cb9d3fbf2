"""B1: jaxlayer installs and works where only keras and jax are installed.

`make test-minimal` runs this file in `.venv-min`, a virtual environment
with `pip install -e .` and pytest only.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import jaxlayer

OPTIONAL = ["tensorflow", "torch", "haiku", "flax", "equinox", "sklearn", "matplotlib", "hypothesis"]


@keras.saving.register_keras_serializable(package="jaxlayer_minimal")
def init_fn(rng, inputs):
    return {"w": jax.random.normal(rng, (inputs.shape[-1], 2))}, {"calls": jnp.zeros((), jnp.int32)}


@keras.saving.register_keras_serializable(package="jaxlayer_minimal")
def call_fn(params, state, rng, inputs, training):
    y = inputs @ params["w"]
    if training:
        y = jnp.where(jax.random.bernoulli(rng, 0.9, y.shape), y, 0.0)
        state = {"calls": state["calls"] + 1}
    return y, state


def test_environment_has_only_the_required_dependencies():
    if not all(importlib.util.find_spec(name) for name in ["keras", "jax", "flatbuffers"]):
        pytest.fail("keras, jax and flatbuffers must be installed")
    present = [name for name in OPTIONAL if importlib.util.find_spec(name) is not None]
    if present:
        pytest.skip(f"not a minimal environment (found {present}); `make test-minimal` builds one")


@pytest.mark.needs_training
def test_build_fit_predict_save_load(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x @ np.ones((3, 2), "float32")
    model = keras.Sequential([keras.Input((3,)), jaxlayer.JaxLayer(call_fn, init_fn, seed=0)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    history = model.fit(x, y, epochs=10, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert int(model.layers[0].get_state()["calls"]) == 40
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert int(loaded.layers[0].get_state()["calls"]) == 40
