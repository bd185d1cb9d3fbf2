"""The benchmark models, each written once per framework.

A `Version` is one model in one framework: its initial parameters, the pure
`apply(params, x)` a hand-written JAX program would use, and constructors for
the Keras layers that wrap it (ours, the adapters, keras.layers.JaxLayer /
FlaxLayer). A constructor that cannot run raises `Unavailable` with the reason,
which the tables show instead of a number. Frameworks are imported lazily.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


class Unavailable(Exception):
    """A variant cannot run here; the message says why."""


@dataclasses.dataclass
class Version:
    name: str
    params: Any
    apply: Callable[[Any, Any], Any]
    make_ours: Callable[[], Any]
    make_keras: Callable[[], Any] | None = None
    keras_name: str = ""


# ----------------------------------------------------------- plain functions


def mlp_init(sizes: list[int]) -> Callable:
    def init_fn(rng, inputs):
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            rng, key = jax.random.split(rng)
            scale = jnp.sqrt(2.0 / fan_in).astype(inputs.dtype)
            params.append(
                {
                    "w": jax.random.normal(key, (fan_in, fan_out), inputs.dtype) * scale,
                    "b": jnp.zeros((fan_out,), inputs.dtype),
                }
            )
        return params

    return init_fn


def mlp_apply(params, inputs):
    x = inputs
    for index, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if index < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def _conv(x, w, b):
    y = jax.lax.conv_general_dilated(
        x, w, window_strides=(2, 2), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(y + b)


def cnn_init(rng, inputs):
    k1, k2, k3 = jax.random.split(rng, 3)
    dtype = inputs.dtype
    return {
        "conv1": {
            "w": jax.random.normal(k1, (3, 3, 1, 32), dtype) * 0.3,
            "b": jnp.zeros(32, dtype),
        },
        "conv2": {
            "w": jax.random.normal(k2, (3, 3, 32, 64), dtype) * 0.06,
            "b": jnp.zeros(64, dtype),
        },
        "dense": {
            "w": jax.random.normal(k3, (7 * 7 * 64, 10), dtype) * 0.02,
            "b": jnp.zeros(10, dtype),
        },
    }


def cnn_apply(params, inputs):
    x = _conv(inputs, params["conv1"]["w"], params["conv1"]["b"])
    x = _conv(x, params["conv2"]["w"], params["conv2"]["b"])
    x = x.reshape(x.shape[0], -1)
    return x @ params["dense"]["w"] + params["dense"]["b"]


def _sample(model: str, batch: int = 2):
    shape = (batch, 784) if model == "mlp" else (batch, 28, 28, 1)
    return jnp.ones(shape, jnp.float32)


# ---------------------------------------------------------------- versions


def plain(model: str, sizes: list[int] | None = None) -> Version:
    from jaxlayer import JaxLayer

    if model == "mlp":
        init_fn, apply = mlp_init(sizes or [784, 512, 512, 10]), mlp_apply
    else:
        init_fn, apply = cnn_init, cnn_apply

    def make_keras():
        import keras

        return keras.layers.JaxLayer(apply, init_fn)

    return Version(
        "plain fn",
        init_fn(jax.random.key(0), _sample(model)),
        apply,
        lambda: JaxLayer(apply, init_fn),
        make_keras,
        "keras.layers.JaxLayer",
    )


def haiku(model: str, sizes: list[int] | None = None) -> Version:
    try:
        import haiku as hk
    except ImportError as error:
        raise Unavailable(f"haiku not installed ({error})") from None
    from jaxlayer import JaxLayer

    sizes = sizes or [784, 512, 512, 10]

    def forward(inputs):
        if model == "mlp":
            return hk.nets.MLP(sizes[1:])(inputs)
        x = jax.nn.relu(hk.Conv2D(32, 3, stride=2)(inputs))
        x = jax.nn.relu(hk.Conv2D(64, 3, stride=2)(x))
        return hk.Linear(10)(hk.Flatten()(x))

    t = hk.without_apply_rng(hk.transform(forward))

    def make_keras():
        import keras

        return keras.layers.JaxLayer(t.apply, t.init)

    return Version(
        "haiku",
        t.init(jax.random.key(0), _sample(model)),
        t.apply,
        lambda: JaxLayer(t.apply, t.init),
        make_keras,
        "keras.layers.JaxLayer",
    )


def flax_module(model: str, sizes: list[int] | None = None):
    import flax.linen as nn

    sizes = sizes or [784, 512, 512, 10]

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for index, width in enumerate(sizes[1:]):
                x = nn.Dense(width)(x)
                if index < len(sizes) - 2:
                    x = nn.relu(x)
            return x

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
            x = nn.relu(nn.Conv(64, (3, 3), strides=2)(x))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    return MLP() if model == "mlp" else CNN()


def _adapter(name: str):
    try:
        import jaxlayer.adapters as adapters
    except ImportError as error:
        raise Unavailable(f"jaxlayer.adapters not importable ({error})") from None
    cls = getattr(adapters, name, None)
    if cls is None:
        raise Unavailable(f"jaxlayer.adapters has no {name} yet")
    return cls


def flax_linen(model: str, sizes: list[int] | None = None) -> Version:
    try:
        module = flax_module(model, sizes)
    except ImportError as error:
        raise Unavailable(f"flax not installed ({error})") from None
    variables = module.init(jax.random.key(0), _sample(model))

    def apply(params, x):
        return module.apply({"params": params}, x)

    def make_ours():
        return _adapter("FlaxLayer")(module)

    def make_keras():
        import keras

        return keras.layers.FlaxLayer(module)

    return Version(
        "flax linen", variables["params"], apply, make_ours, make_keras, "keras.layers.FlaxLayer"
    )


def flax_nnx(model: str, sizes: list[int] | None = None) -> Version:
    try:
        from flax import nnx
    except ImportError as error:
        raise Unavailable(f"flax.nnx not importable ({error})") from None
    sizes = sizes or [784, 512, 512, 10]
    rngs = nnx.Rngs(0)
    if model == "mlp":

        class Net(nnx.Module):
            def __init__(self):
                self.layers = nnx.List(
                    [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
                )

            def __call__(self, x):
                for index, layer in enumerate(self.layers):
                    x = layer(x)
                    if index < len(self.layers) - 1:
                        x = jax.nn.relu(x)
                return x

    else:

        class Net(nnx.Module):
            def __init__(self):
                self.conv1 = nnx.Conv(1, 32, (3, 3), strides=2, rngs=rngs)
                self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
                self.dense = nnx.Linear(7 * 7 * 64, 10, rngs=rngs)

            def __call__(self, x):
                x = jax.nn.relu(self.conv1(x))
                x = jax.nn.relu(self.conv2(x))
                return self.dense(x.reshape(x.shape[0], -1))

    net = Net()
    graphdef, state = nnx.split(net)

    def apply(params, x):
        return nnx.merge(graphdef, params)(x)

    return Version("flax nnx", state, apply, lambda: _adapter("NnxLayer")(net))


def equinox(model: str, sizes: list[int] | None = None) -> Version:
    try:
        import equinox as eqx
    except ImportError as error:
        raise Unavailable(f"equinox not installed ({error})") from None
    sizes = sizes or [784, 512, 512, 10]
    keys = jax.random.split(jax.random.key(0), 4)
    if model == "mlp":
        net = eqx.nn.MLP(sizes[0], sizes[-1], sizes[1], len(sizes) - 2, key=keys[0])
        single = net
    else:

        class Net(eqx.Module):
            conv1: Any
            conv2: Any
            dense: Any

            def __call__(self, x):  # one image, HWC
                x = jnp.transpose(x, (2, 0, 1))
                x = jax.nn.relu(self.conv1(x))
                x = jax.nn.relu(self.conv2(x))
                return self.dense(x.reshape(-1))

        single = Net(
            eqx.nn.Conv2d(1, 32, 3, stride=2, padding=1, key=keys[0]),
            eqx.nn.Conv2d(32, 64, 3, stride=2, padding=1, key=keys[1]),
            eqx.nn.Linear(7 * 7 * 64, 10, key=keys[2]),
        )
    params, static = eqx.partition(single, eqx.is_array)

    def apply(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    return Version("equinox", params, apply, lambda: _adapter("EquinoxLayer")(single))


VERSIONS = {
    "plain": plain,
    "haiku": haiku,
    "flax": flax_linen,
    "nnx": flax_nnx,
    "equinox": equinox,
}
