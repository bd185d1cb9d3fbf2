"""S12: the layer trains in Keras models; same seed, same run."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import to_numpy
from jaxlayer import JaxLayer
from models import dense_init, dropout_call, stateful_call, stateful_init

pytestmark = pytest.mark.needs_training


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    w = rng.normal(size=(4, 3)).astype("float32")
    return x, np.tanh(x @ w)


def _train(seed, call_fn=dropout_call, init_fn=dense_init, epochs=5):
    keras.utils.set_random_seed(seed)
    x, y = _data()
    layer = JaxLayer(call_fn, init_fn, seed=seed)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(keras.optimizers.Adam(0.02), "mse")
    before = layer.get_params()
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=False)
    return history.history["loss"], before, layer, model


def test_fit_loss_falls_and_weights_change():
    losses, before, layer, model = _train(0)
    assert losses[-1] < 0.6 * losses[0]
    after = layer.get_params()
    assert not np.allclose(before["dense"]["kernel"], after["dense"]["kernel"])
    x, y = _data()
    assert model.evaluate(x, y, verbose=0) < losses[0]


def test_same_seed_reproduces_the_same_run():
    a = _train(1, epochs=2)
    b = _train(1, epochs=2)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_array_equal(a[2].get_params()["out"]["kernel"], b[2].get_params()["out"]["kernel"])
    c = _train(2, epochs=2)
    assert not np.allclose(a[0], c[0])


def test_stateful_model_trains_and_state_changes():
    losses, _, layer, _ = _train(0, stateful_call, stateful_init)
    assert losses[-1] < losses[0]
    assert int(layer.get_state()["steps"]) == 5 * 8


def test_functional_and_subclassed_models_with_callbacks_and_metrics():
    x, y = _data()
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(JaxLayer(dropout_call, dense_init, seed=0)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse", metrics=["mae"])
    # A huge min_delta: no epoch counts as an improvement, so EarlyStopping
    # must stop after 1 + patience epochs out of 10.
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=1e9)
    history = model.fit(x, y, epochs=10, verbose=0, callbacks=[stopper])
    assert "mae" in history.history
    assert len(history.history["loss"]) == 2 and stopper.stopped_epoch == 1
    predictions = model.predict(x[:5], verbose=0)
    assert predictions.shape == (5, 3)
    np.testing.assert_allclose(predictions, to_numpy(model(x[:5])), rtol=1e-5, atol=1e-6)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.body = JaxLayer(dropout_call, dense_init, seed=1)
            self.head = keras.layers.Dense(3)

        def call(self, inputs, training=False):
            return self.head(self.body(inputs, training=training))

    sub = Subclassed()
    if keras.config.backend() == "torch":
        # Keras-torch infers shapes with meta tensors, which init_fn cannot
        # run on: build the layer on data first (README, Troubleshooting).
        sub(x[:2])
    sub.compile("adam", "mse", metrics=["mae"])
    history = sub.fit(x, y, epochs=2, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["mae"]) == 2
    assert len(sub.trainable_weights) == 6  # 4 in the JaxLayer, 2 in the Dense
    np.testing.assert_allclose(to_numpy(sub.predict(x[:5], verbose=0)), to_numpy(sub(x[:5])), rtol=1e-5, atol=1e-6)


def test_summary_counts_parameters():
    layer = JaxLayer(stateful_call, stateful_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    assert "Trainable params: 67" in text  # 4*8 + 8 + 8*3 + 3
    assert "Non-trainable params: 5" in text  # mean (4) + steps (1)
