"""A JAX model trained inside Keras on the TensorFlow backend, next to native Keras layers.

The layer runs the JAX function through jax2tf, with gradients, so `fit`
trains the JAX params and the Keras Dense layer together.

    python examples/tensorflow_backend.py --epochs 5
"""

import argparse
import os

os.environ["KERAS_BACKEND"] = "tensorflow"  # Keras reads this once, at import

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from jaxlayer import JaxLayer  # noqa: E402


@keras.saving.register_keras_serializable(package="examples")
def features_init(rng, inputs):
    return {"w": jax.random.normal(rng, (inputs.shape[-1], 64)) * 0.1, "b": jnp.zeros(64)}


@keras.saving.register_keras_serializable(package="examples")
def features_call(params, inputs):
    return jax.nn.gelu(inputs @ params["w"] + params["b"])


def main(epochs: int) -> None:
    assert keras.config.backend() == "tensorflow", keras.config.backend()
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    jax_features = JaxLayer(features_call, features_init, name="jax_features")
    model = keras.Sequential([keras.Input((64,)), jax_features, keras.layers.Dense(10)])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = jax_features.get_params()["w"]
    model.fit(x[:1500], y[:1500], epochs=epochs, batch_size=32, verbose=2)
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    moved = float(np.abs(jax_features.get_params()["w"] - before).max())
    print(f"Keras backend: {keras.config.backend()}; held-out accuracy: {accuracy:.3f}")
    print(f"the JAX params were trained too (largest change {moved:.3g})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    main(parser.parse_args().epochs)
