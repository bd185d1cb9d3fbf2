"""The demo CNN as a Flax Linen module, wrapped in `jaxlayer.adapters.FlaxLayer`.

The module class is defined (and registered with Keras, so `.keras` files
load) on first use, so importing this file does not import Flax.
"""

from __future__ import annotations

import functools

import keras

from .._deps import FLAX

REQUIRES = (FLAX,)
DESCRIPTION = "Flax Linen CNN (nn.Module) in jaxlayer.adapters.FlaxLayer"


@functools.cache
def register():
    """Defines and registers the Linen module class; returns it."""
    import flax.linen as nn

    @keras.saving.register_keras_serializable(package="jaxlayer_demo")
    class DigitsLinenCNN(nn.Module):
        hidden: int = 200
        classes: int = 10
        dropout_rate: float = 0.3

        @nn.compact
        def __call__(self, inputs, training=False):
            x = nn.Conv(features=32, kernel_size=(3, 3))(inputs)
            x = nn.relu(x)
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nn.Dense(self.hidden)(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not training)(x)
            x = nn.relu(x)
            x = nn.Dense(self.classes)(x)
            return nn.softmax(x)

        def get_config(self):
            # Keras registers only classes with `get_config`; load_model calls
            # `DigitsLinenCNN(**config)`.
            return {
                "hidden": self.hidden,
                "classes": self.classes,
                "dropout_rate": self.dropout_rate,
            }

    return DigitsLinenCNN


def make_layer(seed: int) -> keras.layers.Layer:
    from jaxlayer.adapters import FlaxLayer

    return FlaxLayer(register()(), seed=seed, name="flax_cnn")
