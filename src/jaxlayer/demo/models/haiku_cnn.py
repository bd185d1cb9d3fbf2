"""The seed's CNN written with Haiku, wrapped in `JaxLayer(call_fn=t.apply, init_fn=t.init)`.

Conv2D(32, 3x3) -> relu -> AvgPool(2x2) -> Flatten -> Linear(200)
-> dropout(0.3) in training -> relu -> Linear(10) -> softmax.

`hk.transform(...)` returns fresh closures that Keras cannot find again at
load time, so the transform's `apply`/`init` are wrapped in module-level
functions registered as Keras serializables. Haiku is imported on first use.
"""

from __future__ import annotations

import functools

import keras

from .._deps import HAIKU

REQUIRES = (HAIKU,)
DESCRIPTION = "Haiku CNN (hk.transform) in jaxlayer.JaxLayer(call_fn=t.apply, init_fn=t.init)"


@functools.cache
def transformed():
    """The `hk.transform`ed forward function (built once, on first use)."""
    import haiku as hk
    import jax

    def forward(inputs, training):
        x = hk.Conv2D(output_channels=32, kernel_shape=(3, 3))(inputs)
        x = jax.nn.relu(x)
        x = hk.AvgPool(window_shape=(2, 2), strides=(2, 2), padding="VALID")(x)
        x = hk.Flatten()(x)
        x = hk.Linear(200)(x)
        if training:
            x = hk.dropout(hk.next_rng_key(), 0.3, x)
        x = jax.nn.relu(x)
        x = hk.Linear(10)(x)
        return jax.nn.softmax(x)

    return hk.transform(forward)


@keras.saving.register_keras_serializable(package="jaxlayer_demo")
def haiku_cnn_init(rng, inputs, training):
    return transformed().init(rng, inputs, training)


@keras.saving.register_keras_serializable(package="jaxlayer_demo")
def haiku_cnn_apply(params, rng, inputs, training):
    return transformed().apply(params, rng, inputs, training)


def make_layer(seed: int) -> keras.layers.Layer:
    from jaxlayer import JaxLayer

    return JaxLayer(call_fn=haiku_cnn_apply, init_fn=haiku_cnn_init, seed=seed, name="haiku_cnn")


def register() -> None:
    """Nothing to do: the functions above are registered when this module is imported."""
