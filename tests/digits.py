"""scikit-learn's bundled 8x8 digits, and the fit-on-digits check every adapter passes."""

from __future__ import annotations

import keras
import numpy as np


def load_digits_data():
    """Shuffled digits (the file is ordered by writer), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    return (x[order] / 16.0).astype("float32"), y[order].astype("int32")


def fit_and_check_digits(layer, run_eagerly=False, epochs=5, min_accuracy=0.9, train_samples=1500):
    """Trains `layer` (64 inputs -> 10 logits) on the first `train_samples`
    digits (at most 1500) in batches of 64: the loss falls and accuracy on
    the digits after the 1500th reaches `min_accuracy`. Returns the accuracy."""
    x, y = load_digits_data()
    model = keras.Sequential([keras.Input((64,)), layer])
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )
    assert train_samples <= 1500
    train = slice(0, train_samples)
    history = model.fit(x[train], y[train], epochs=epochs, batch_size=64, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    assert accuracy >= min_accuracy
    return accuracy
