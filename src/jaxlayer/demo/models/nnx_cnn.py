"""The demo CNN as a Flax NNX module, wrapped in `jaxlayer.adapters.NnxLayer`.

The module class is defined (and registered with Keras, so `.keras` files
load) on first use, so importing this file does not import Flax.
"""

from __future__ import annotations

import functools

import keras

from .._deps import FLAX

REQUIRES = (FLAX,)
DESCRIPTION = "Flax NNX CNN (nnx.Module) in jaxlayer.adapters.NnxLayer"


@functools.cache
def register():
    """Defines and registers the NNX module class; returns it."""
    from flax import nnx

    @keras.saving.register_keras_serializable(package="jaxlayer_demo")
    class DigitsNnxCNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs, hidden: int = 200, classes: int = 10):
            self.hidden, self.classes = hidden, classes
            self.conv = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
            self.dense = nnx.Linear(4 * 4 * 32, hidden, rngs=rngs)
            self.dropout = nnx.Dropout(0.3, rngs=rngs)
            self.out = nnx.Linear(hidden, classes, rngs=rngs)

        def __call__(self, inputs):
            x = nnx.relu(self.conv(inputs))
            x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nnx.relu(self.dropout(self.dense(x)))
            return nnx.softmax(self.out(x))

        def get_config(self):
            return {"hidden": self.hidden, "classes": self.classes}

        @classmethod
        def from_config(cls, config):
            # Any `rngs` will do: load_model restores the saved weights.
            return cls(rngs=nnx.Rngs(0), **config)

    return DigitsNnxCNN


def make_layer(seed: int) -> keras.layers.Layer:
    from flax import nnx

    from jaxlayer.adapters import NnxLayer

    return NnxLayer(register()(rngs=nnx.Rngs(seed)), seed=seed, name="nnx_cnn")
