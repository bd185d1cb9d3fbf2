"""A model written as two plain JAX functions, trained with Keras, then used again in JAX.

python examples/plain_jax.py --epochs 5
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from jaxlayer import JaxLayer  # noqa: E402


def init_fn(rng, inputs):
    k1, k2 = jax.random.split(rng)
    features = inputs.shape[-1]
    return {
        "hidden": {"w": jax.random.normal(k1, (features, 64)) / features**0.5, "b": jnp.zeros(64)},
        "out": {"w": jax.random.normal(k2, (64, 10)) / 8.0, "b": jnp.zeros(10)},
    }


def call_fn(params, inputs):
    hidden = jax.nn.relu(inputs @ params["hidden"]["w"] + params["hidden"]["b"])
    return hidden @ params["out"]["w"] + params["out"]["b"]  # logits


def main(epochs: int) -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    layer = JaxLayer(call_fn, init_fn)
    model = keras.Sequential([keras.Input((64,)), layer])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x[:1500], y[:1500], epochs=epochs, batch_size=32, verbose=2)
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    print(f"held-out accuracy: {accuracy:.3f}")

    # The trained weights, back as a plain PyTree of JAX arrays.
    params = layer.get_params()
    logits = jax.jit(call_fn)(params, jnp.asarray(x[1500:]))
    np.testing.assert_allclose(logits, model.predict(x[1500:], verbose=0), rtol=1e-5, atol=1e-5)
    print("pure-JAX call_fn(layer.get_params(), x) matches model.predict")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    main(parser.parse_args().epochs)
