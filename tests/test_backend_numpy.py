"""The numpy backend: inference only. `evaluate` and `predict` run the layer
and write its state back; training is refused clearly (by Keras for `fit`,
by the layer for a training call)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer

if BACKEND != "numpy":
    pytest.skip("numpy backend tests run with KERAS_BACKEND=numpy", allow_module_level=True)


def call_fn(params, state, inputs, training):
    return inputs @ params["w"], {"calls": state["calls"] + 1}


def _model():
    layer = JaxLayer(call_fn, params={"w": np.ones((3, 2), "float32")}, state={"calls": np.zeros((), "int32")})
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile("sgd", "mse")
    return model


def test_evaluate_computes_the_loss_and_writes_state_back():
    model = _model()
    x, y = np.ones((8, 3), "float32"), np.ones((8, 2), "float32")
    assert model.evaluate(x, y, batch_size=4, verbose=0) == pytest.approx(4.0)  # (3 - 1) ** 2
    assert int(model.layers[0].get_state()["calls"]) == 2  # one inference call per batch
    np.testing.assert_array_equal(to_numpy(model.predict(x, verbose=0)), np.full((8, 2), 3.0))
    assert int(model.layers[0].get_state()["calls"]) == 3


def test_fit_and_training_calls_are_refused_clearly():
    model = _model()
    with pytest.raises(NotImplementedError, match="fit not implemented for NumPy backend"):
        model.fit(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), verbose=0)
    with pytest.raises(ValueError, match=r"cannot train on the `numpy` Keras backend.*Received: training=True"):
        model.layers[0](np.ones((4, 3), "float32"), training=True)
