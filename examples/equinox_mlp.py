"""An Equinox MLP as a Keras layer with `EquinoxLayer`, then the trained model back in Equinox.

python examples/equinox_mlp.py --epochs 5
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from jaxlayer.adapters import EquinoxLayer  # noqa: E402


def main(epochs: int) -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    mlp = eqx.nn.MLP(in_size=64, out_size=10, width_size=128, depth=2, key=jax.random.key(0))
    layer = EquinoxLayer(mlp)  # the model takes one example; the layer maps it over the batch
    model = keras.Sequential([keras.Input((64,)), layer])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x[:1500], y[:1500], epochs=epochs, verbose=2)
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    print(f"held-out accuracy: {accuracy:.3f}")

    trained = layer.get_model()  # an eqx.nn.MLP holding the trained weights
    logits = jax.vmap(trained)(x[1500:])
    np.testing.assert_allclose(logits, model.predict(x[1500:], verbose=0), rtol=1e-5, atol=1e-5)
    print("the trained Equinox model matches model.predict")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    main(parser.parse_args().epochs)
