"""Models whose code is NOT registered with Keras, so `model.save` stores them
portably. Each builder returns `(model, has_state, has_dropout)`; the
frameworks are imported inside the builders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np

FEATURES = 8
CLASSES = 3


def data(n: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    return x, y


def plain_closure():
    """A closure over a Python constant, with dropout and an integer counter."""
    scale = 0.3

    def init_fn(rng, inputs):
        k1, k2 = jax.random.split(rng)
        params = {
            "hidden": {"kernel": jax.random.normal(k1, (inputs.shape[-1], 16)) * scale, "bias": jnp.zeros(16)},
            "out": {"kernel": jax.random.normal(k2, (16, CLASSES)) * scale, "bias": jnp.zeros(CLASSES)},
        }
        state = {"steps": jnp.zeros((), jnp.int32), "mean": jnp.zeros(inputs.shape[-1])}
        return params, state

    def call_fn(params, state, rng, inputs, training):
        if training:
            state = {"steps": state["steps"] + 1, "mean": 0.9 * state["mean"] + 0.1 * inputs.mean(0)}
        h = jax.nn.relu((inputs - state["mean"]) @ params["hidden"]["kernel"] + params["hidden"]["bias"])
        if training:
            h = jnp.where(jax.random.bernoulli(rng, 0.8, h.shape), h / 0.8, 0.0)
        return h @ params["out"]["kernel"] + params["out"]["bias"], state

    from jaxlayer import JaxLayer

    return keras.Sequential([keras.Input((FEATURES,)), JaxLayer(call_fn, init_fn, seed=1)]), True, True


def _haiku_forward(inputs, training):
    import haiku as hk

    x = jax.nn.relu(hk.Linear(16)(inputs))
    x = hk.BatchNorm(True, True, 0.9)(x, training)
    if training:
        x = hk.dropout(hk.next_rng_key(), 0.2, x)
    return hk.nets.MLP([16, CLASSES])(x)


def haiku_seed_style():
    """The seed's way: `JaxLayer(call_fn=t.apply, init_fn=t.init)`."""
    import haiku as hk

    from jaxlayer import JaxLayer

    t = hk.transform_with_state(_haiku_forward)
    layer = JaxLayer(call_fn=t.apply, init_fn=t.init, seed=2)
    return keras.Sequential([keras.Input((FEATURES,)), layer]), True, True


def haiku_layer():
    import haiku as hk

    from jaxlayer import HaikuLayer

    layer = HaikuLayer(hk.transform_with_state(_haiku_forward), seed=3)
    return keras.Sequential([keras.Input((FEATURES,)), layer]), True, True


def flax_linen():
    import flax.linen as nn

    from jaxlayer import FlaxLayer

    class LinenMLP(nn.Module):  # not registered with Keras
        @nn.compact
        def __call__(self, x, training):
            x = nn.relu(nn.Dense(16)(x))
            x = nn.BatchNorm(use_running_average=not training, momentum=0.9)(x)
            x = nn.Dropout(0.2, deterministic=not training)(x)
            return nn.Dense(CLASSES)(x)

    return keras.Sequential([keras.Input((FEATURES,)), FlaxLayer(LinenMLP(), seed=4)]), True, True


def flax_nnx():
    from flax import nnx

    from jaxlayer import NnxLayer

    class NnxMLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(FEATURES, 16, rngs=rngs)
            self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
            self.drop = nnx.Dropout(0.2, rngs=rngs)
            self.out = nnx.Linear(16, CLASSES, rngs=rngs)

        def __call__(self, x):
            return self.out(self.drop(self.norm(nnx.relu(self.hidden(x)))))

    layer = NnxLayer(NnxMLP(nnx.Rngs(0)), seed=5)
    return keras.Sequential([keras.Input((FEATURES,)), layer]), True, True


def equinox_mlp():
    import equinox as eqx

    from jaxlayer import EquinoxLayer

    model = eqx.nn.MLP(FEATURES, CLASSES, width_size=16, depth=2, key=jax.random.key(0))
    return keras.Sequential([keras.Input((FEATURES,)), EquinoxLayer(model)]), False, False


BUILDERS = {
    "plain_closure": plain_closure,
    "haiku_seed_style": haiku_seed_style,
    "haiku_layer": haiku_layer,
    "flax_linen": flax_linen,
    "flax_nnx": flax_nnx,
    "equinox_mlp": equinox_mlp,
}
