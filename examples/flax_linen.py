"""A Flax Linen module with dropout, as a Keras layer with `jaxlayer.adapters.FlaxLayer`.

python examples/flax_linen.py --epochs 5
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from jaxlayer.adapters import FlaxLayer  # noqa: E402


class MLP(nn.Module):
    hidden: int = 128

    @nn.compact
    def __call__(self, inputs, training=False):
        x = nn.relu(nn.Dense(self.hidden)(inputs))
        x = nn.Dropout(0.2, deterministic=not training)(x)  # gets a fresh "dropout" key
        return nn.Dense(10)(x)


def main(epochs: int) -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    layer = FlaxLayer(MLP(), seed=0)
    model = keras.Sequential([keras.Input((64,)), layer])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.summary()
    model.fit(x[:1500], y[:1500], epochs=epochs, verbose=2)
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    print(f"held-out accuracy: {accuracy:.3f}")
    # Back to Flax: the trained variables, ready for `MLP().apply`.
    variables = layer.get_params()
    print("Flax variables:", sorted(variables["params"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    main(parser.parse_args().epochs)
