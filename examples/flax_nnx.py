"""A Flax NNX module with BatchNorm and Dropout, as a Keras layer with `NnxLayer`.

python examples/flax_nnx.py --epochs 5
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
from flax import nnx  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from jaxlayer.adapters import NnxLayer  # noqa: E402


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 128, rngs=rngs)
        self.norm = nnx.BatchNorm(128, rngs=rngs)  # running statistics: non-trainable state
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, inputs):
        x = nnx.relu(self.norm(self.hidden(inputs)))
        return self.out(self.dropout(x))


def main(epochs: int) -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    layer = NnxLayer(MLP(nnx.Rngs(0)), seed=0)  # Keras's training flag switches train/eval mode
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
    print("non-trainable state:", [v.name for v in layer.non_trainable_weights])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    main(parser.parse_args().epochs)
