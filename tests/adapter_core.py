"""The core life cycle every adapter passes, in both of Keras's variable modes
on JAX (tests calling it are marked `nnx_mode`, so `make test-nnx` runs them
with KERAS_NNX_ENABLED=true) and on every backend that trains."""

from __future__ import annotations

import keras
import numpy as np

from conftest import to_numpy


def check_build_call_fit(layer, x, y, reference, epochs=4):
    """Builds `layer` from `keras.Input`, checks inference against
    `reference(layer)` (the framework's own call on the layer's current
    values), fits a few full batches in graph mode (the default) and checks
    that every parameter and float state leaf moved, the loss fell, and
    inference still equals the framework's call on the trained values."""
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    assert layer.built
    if keras.config.is_nnx_enabled():
        from flax import nnx

        assert isinstance(layer, nnx.Module)
        assert all(isinstance(v, nnx.Variable) for v in layer.weights)
    np.testing.assert_allclose(to_numpy(model(x)), reference(layer), rtol=1e-5, atol=1e-5)
    params_before = [to_numpy(v) for v in layer.trainable_weights]
    floats = [v for v in layer.non_trainable_weights if "float" in str(v.dtype)]
    state_before = [to_numpy(v) for v in floats]
    model.compile(keras.optimizers.Adam(0.01), "mse")
    assert not model.run_eagerly
    history = model.fit(x, y, batch_size=len(x) // 2, epochs=epochs, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    for before, variable in zip(params_before, layer.trainable_weights, strict=True):
        assert not np.allclose(before, to_numpy(variable)), variable.name
    assert floats, "the core check needs a model with float state (e.g. BatchNorm)"
    for before, variable in zip(state_before, floats, strict=True):
        assert not np.allclose(before, to_numpy(variable)), variable.name
    np.testing.assert_allclose(to_numpy(model(x)), reference(layer), rtol=1e-5, atol=1e-5)
    return model


def regression_data(features, outputs, samples=16, seed=0):
    rs = np.random.RandomState(seed)
    x = rs.randn(samples, features).astype("float32")
    y = np.tanh(x @ rs.randn(features, outputs)).astype("float32")
    return x, y
