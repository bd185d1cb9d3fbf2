"""Small JAX models shared by the core tests (pure functions, no framework)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense_init(rng, inputs):
    k1, k2 = jax.random.split(rng)
    features = inputs.shape[-1]
    return {
        "dense": {"kernel": jax.random.normal(k1, (features, 8)) * 0.3, "bias": jnp.zeros(8)},
        "out": {"kernel": jax.random.normal(k2, (8, 3)) * 0.3, "bias": jnp.zeros(3)},
    }


def mlp_apply(params, inputs):
    h = jnp.tanh(inputs @ params["dense"]["kernel"] + params["dense"]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def mlp_call(params, inputs):
    return mlp_apply(params, inputs)


def stateful_init(rng, inputs):
    params = dense_init(rng, inputs)
    state = {"mean": jnp.zeros(inputs.shape[-1]), "steps": jnp.zeros((), jnp.int32)}
    return params, state


def stateful_call(params, state, inputs, training):
    """A BatchNorm-style running mean: updated in training, used in inference."""
    if training:
        mean = inputs.mean(axis=0)
        state = {"mean": 0.9 * state["mean"] + 0.1 * mean, "steps": state["steps"] + 1}
    else:
        mean = state["mean"]
    return mlp_apply(params, inputs - mean), state


def dropout_call(params, rng, inputs, training):
    y = mlp_apply(params, inputs)
    if training:
        keep = jax.random.bernoulli(rng, 0.5, y.shape)
        y = jnp.where(keep, y / 0.5, 0.0)
    return y
