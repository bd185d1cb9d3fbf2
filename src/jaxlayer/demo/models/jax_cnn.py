"""The demo CNN as two plain JAX functions (no framework), wrapped in `JaxLayer`.

Same architecture as the Haiku model: conv 3x3x32 (SAME) -> relu -> average
pool 2x2 -> flatten -> dense 200 -> dropout 0.3 in training -> relu ->
dense 10 -> softmax.
"""

from __future__ import annotations

import keras

REQUIRES = ()
DESCRIPTION = "plain JAX functions (init_fn/call_fn) in jaxlayer.JaxLayer"


def _dense_init(rng, fan_in, fan_out):
    import jax
    import jax.numpy as jnp

    scale = 1.0 / fan_in**0.5
    return {
        "kernel": scale * jax.random.truncated_normal(rng, -2.0, 2.0, (fan_in, fan_out)),
        "bias": jnp.zeros((fan_out,)),
    }


@keras.saving.register_keras_serializable(package="jaxlayer_demo")
def jax_cnn_init(rng, inputs):
    import jax

    conv_rng, hidden_rng, out_rng = jax.random.split(rng, 3)
    channels = inputs.shape[-1]
    conv = _dense_init(conv_rng, 3 * 3 * channels, 32)
    conv["kernel"] = conv["kernel"].reshape(3, 3, channels, 32)
    height, width = inputs.shape[1] // 2, inputs.shape[2] // 2
    return {
        "conv": conv,
        "hidden": _dense_init(hidden_rng, height * width * 32, 200),
        "output": _dense_init(out_rng, 200, 10),
    }


@keras.saving.register_keras_serializable(package="jaxlayer_demo")
def jax_cnn_apply(params, rng, inputs, training):
    import jax

    x = jax.lax.conv_general_dilated(
        inputs,
        params["conv"]["kernel"],
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    x = jax.nn.relu(x + params["conv"]["bias"])
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
    x = x.reshape(x.shape[0], -1)
    x = x @ params["hidden"]["kernel"] + params["hidden"]["bias"]
    if training:
        keep = jax.random.bernoulli(rng, 0.7, x.shape)
        x = jax.numpy.where(keep, x / 0.7, 0.0)
    x = jax.nn.relu(x)
    x = x @ params["output"]["kernel"] + params["output"]["bias"]
    return jax.nn.softmax(x)


def make_layer(seed: int) -> keras.layers.Layer:
    from jaxlayer import JaxLayer

    return JaxLayer(call_fn=jax_cnn_apply, init_fn=jax_cnn_init, seed=seed, name="jax_cnn")


def register() -> None:
    """Nothing to do: the functions above are registered when this module is imported."""
