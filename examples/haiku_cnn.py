"""The Haiku CNN from the jaxlayer seed: `hk.transform` + `JaxLayer`, trained, saved, reloaded.

python examples/haiku_cnn.py --epochs 8
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import haiku as hk  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from jaxlayer import JaxLayer  # noqa: E402


def forward(inputs, training):
    x = hk.Conv2D(32, (3, 3))(inputs)
    x = hk.AvgPool(window_shape=(2, 2), strides=(2, 2), padding="VALID")(jax.nn.relu(x))
    x = hk.Linear(200)(hk.Flatten()(x))
    if training:
        x = hk.dropout(hk.next_rng_key(), 0.3, x)
    x = hk.Linear(10)(jax.nn.relu(x))
    return jax.nn.softmax(x)


transformed = hk.transform(forward)


# Registered module-level functions, so that `model.save` / `load_model` work.
@keras.saving.register_keras_serializable(package="examples")
def cnn_init(rng, inputs, training):
    return transformed.init(rng, inputs, training)


@keras.saving.register_keras_serializable(package="examples")
def cnn_apply(params, rng, inputs, training):
    return transformed.apply(params, rng, inputs, training)


def main(epochs: int) -> None:
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target
    model = keras.Sequential([keras.Input((8, 8, 1)), JaxLayer(cnn_apply, cnn_init, seed=0)])
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x[:1500], y[:1500], epochs=epochs, validation_split=0.1, verbose=2)
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    print(f"held-out accuracy: {accuracy:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "haiku_cnn.keras")
        model.save(path)
        reloaded = keras.models.load_model(path)
    same = np.array_equal(model.predict(x[1500:], verbose=0), reloaded.predict(x[1500:], verbose=0))
    print(f"reloaded model gives identical predictions: {same}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    main(parser.parse_args().epochs)
