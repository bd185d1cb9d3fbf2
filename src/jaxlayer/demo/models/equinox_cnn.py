"""The demo CNN as an Equinox module, wrapped in `jaxlayer.adapters.EquinoxLayer`.

Equinox models take one example at a time; the layer maps the model over
the batch. The class is defined (and registered with Keras, so `.keras`
files load) on first use, so importing this file does not import Equinox.
"""

from __future__ import annotations

import functools

import keras

from .._deps import EQUINOX

REQUIRES = (EQUINOX,)
DESCRIPTION = "Equinox CNN (eqx.Module) in jaxlayer.adapters.EquinoxLayer"


@functools.cache
def register():
    """Defines and registers the Equinox module class; returns it."""
    import equinox as eqx
    import jax

    @keras.saving.register_keras_serializable(package="jaxlayer_demo")
    class DigitsEquinoxCNN(eqx.Module):
        conv: eqx.nn.Conv2d
        pool: eqx.nn.AvgPool2d
        dense: eqx.nn.Linear
        dropout: eqx.nn.Dropout
        out: eqx.nn.Linear
        seed: int = eqx.field(static=True)

        def __init__(self, seed: int = 0):
            conv_key, dense_key, out_key = jax.random.split(jax.random.key(seed), 3)
            self.seed = seed
            self.conv = eqx.nn.Conv2d(1, 32, kernel_size=3, padding=1, key=conv_key)
            self.pool = eqx.nn.AvgPool2d(kernel_size=2, stride=2)
            self.dense = eqx.nn.Linear(32 * 4 * 4, 200, key=dense_key)
            self.dropout = eqx.nn.Dropout(0.3)
            self.out = eqx.nn.Linear(200, 10, key=out_key)

        def __call__(self, inputs, *, key=None):
            x = jax.numpy.transpose(inputs, (2, 0, 1))  # HWC -> CHW, as Equinox expects
            x = self.pool(jax.nn.relu(self.conv(x)))
            x = jax.nn.relu(self.dropout(self.dense(x.reshape(-1)), key=key))
            return jax.nn.softmax(self.out(x))

        def get_config(self):
            return {"seed": self.seed}

        @classmethod
        def from_config(cls, config):
            return cls(**config)

    return DigitsEquinoxCNN


def make_layer(seed: int) -> keras.layers.Layer:
    from jaxlayer.adapters import EquinoxLayer

    return EquinoxLayer(register()(seed=seed), seed=seed, name="equinox_cnn")
