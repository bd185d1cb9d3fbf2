"""Trains a JaxLayer under a Keras distribution and prints a JSON report.

Run by `tests/test_distribution.py` in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (JAX fixes its device
count when it starts, so it cannot run inside the pytest process). Usage:
`python train_distributed.py data_parallel|model_parallel|adapters`.

Each scenario runs the same steps twice in one process, once under the
distribution and once without (all on device 0), and reports the variables'
shardings, the shardings `call_fn` saw while `fit` traced it, and the final
weights of both runs.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import keras
import numpy as np

from jaxlayer import JaxLayer

FEATURES, HIDDEN, OUTPUTS, SAMPLES, BATCH = 4, 8, 2, 32, 16

# What `call_fn` saw while being traced: name -> list of sharding descriptions.
SEEN: dict[str, list] = {}


def initial_params() -> dict:
    rs = np.random.RandomState(0)
    return {
        "dense": {
            "kernel": (rs.randn(FEATURES, HIDDEN) * 0.5).astype("float32"),
            "bias": (rs.randn(HIDDEN) * 0.1).astype("float32"),
        },
        "out": {
            "kernel": (rs.randn(HIDDEN, OUTPUTS) * 0.5).astype("float32"),
            "bias": np.zeros(OUTPUTS, "float32"),
        },
    }


def initial_state() -> dict:
    return {"running": {"mean": np.zeros(FEATURES, "float32"), "steps": np.int32(0)}}


def init_fn(inputs):
    # Deterministic (no rng), so the distributed and single-device runs start equal.
    return jax.tree.map(jnp.asarray, (initial_params(), initial_state()))


def describe(sharding, ndim: int) -> dict:
    spec = getattr(sharding, "spec", None)
    axes = None
    if spec is not None:
        axes = [list(a) if isinstance(a, tuple) else a for a in spec]
        axes += [None] * (ndim - len(axes))
    mesh = getattr(sharding, "mesh", None)
    return {
        "spec": axes,
        "mesh": None if mesh is None else {str(k): int(v) for k, v in mesh.shape.items()},
        "devices": len(sharding.device_set),
        "replicated": bool(sharding.is_fully_replicated),
    }


def record(name: str, x) -> None:
    def callback(sharding):
        SEEN.setdefault(name, []).append(describe(sharding, x.ndim))

    jax.debug.inspect_array_sharding(x, callback=callback)


def call_fn(params, state, inputs, training):
    record("inputs", inputs)
    for group in ("dense", "out"):
        for leaf in ("kernel", "bias"):
            record(f"{group}.{leaf}", params[group][leaf])
    record("running.mean", state["running"]["mean"])
    running = state["running"]
    if training:
        # A BatchNorm-style running mean of the inputs, and a step counter.
        running = {
            "mean": 0.9 * running["mean"] + 0.1 * inputs.mean(axis=0),
            "steps": running["steps"] + 1,
        }
    hidden = jnp.tanh(inputs @ params["dense"]["kernel"] + params["dense"]["bias"])
    outputs = hidden @ params["out"]["kernel"] + params["out"]["bias"]
    return outputs, {"running": running}


def data() -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(1)
    x = rs.randn(SAMPLES, FEATURES).astype("float32")
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1).astype("float32")
    return x, y


def variable_shardings(layer: JaxLayer) -> dict:
    return {v.name: describe(v.value.sharding, len(v.shape)) for v in layer.weights}


def train(distribution, build_from: str) -> dict:
    """Builds the layer (from `params=` or `init_fn`), fits 4 SGD steps, reports."""
    keras.backend.clear_session()
    keras.distribution.set_distribution(distribution)
    SEEN.clear()
    if build_from == "params":
        layer = JaxLayer(
            call_fn, params=initial_params(), state=initial_state(), name="model_layer"
        )
    else:
        layer = JaxLayer(call_fn, init_fn, name="model_layer")
    model = keras.Sequential([keras.Input((FEATURES,)), layer])
    created = variable_shardings(layer)
    paths = sorted(v.path for v in layer.weights)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = data()
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    params = layer.get_params()
    state = layer.get_state()
    report = {
        "paths": paths,
        "created": created,
        "after_fit": variable_shardings(layer),
        "seen_in_fit": dict(SEEN),
        "get_params": {
            f"{g}.{k}": describe(params[g][k].sharding, params[g][k].ndim)
            for g in params
            for k in params[g]
        },
        "losses": [float(v) for v in history.history["loss"]],
        "final": jax.tree.map(lambda a: np.asarray(a).tolist(), params),
        "final_state": jax.tree.map(lambda a: np.asarray(a).tolist(), state),
        "state_dtypes": {v.name: str(v.dtype) for v in layer.non_trainable_weights},
    }
    keras.distribution.set_distribution(None)
    return report


# ------------------------------------------------------------------ adapters


def adapter_factories() -> dict:
    """name -> (make_layer, {path regex: layout}) for each installed framework.

    Each model is the same 4 -> 8 -> 2 MLP; the regexes use the variable
    names each adapter gives (Flax `params.Dense_0.kernel`, Haiku
    `mlp.linear_0.w`, Equinox `layers.0.weight`, NNX `hidden.kernel`).
    """
    import importlib.util

    from jaxlayer import adapters

    factories = {}
    if importlib.util.find_spec("flax") is not None:
        import flax.linen as nn

        class LinenMLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                hidden = jnp.tanh(nn.Dense(HIDDEN)(x))  # Dense_0
                return nn.Dense(OUTPUTS)(hidden)  # Dense_1

        factories["flax_linen"] = (
            lambda: adapters.FlaxLayer(LinenMLP(), name="model_layer"),
            {
                r".*Dense_0\.kernel": (None, "model"),
                r".*Dense_0\.bias": ("model",),
                r".*Dense_1\.kernel": ("model", None),
            },
        )

        from flax import nnx

        class NnxMLP(nnx.Module):
            def __init__(self, rngs):
                self.hidden = nnx.Linear(FEATURES, HIDDEN, rngs=rngs)
                self.out = nnx.Linear(HIDDEN, OUTPUTS, rngs=rngs)

            def __call__(self, x):
                return self.out(jnp.tanh(self.hidden(x)))

        factories["nnx"] = (
            lambda: adapters.NnxLayer(NnxMLP(nnx.Rngs(0)), name="model_layer"),
            {
                r".*hidden\.kernel": (None, "model"),
                r".*hidden\.bias": ("model",),
                r".*out\.kernel": ("model", None),
            },
        )
    if importlib.util.find_spec("haiku") is not None:
        import haiku as hk

        def haiku_mlp(x):
            return hk.nets.MLP([HIDDEN, OUTPUTS], activation=jnp.tanh)(x)

        factories["haiku"] = (
            lambda: adapters.HaikuLayer(hk.transform(haiku_mlp), name="model_layer"),
            {
                r".*linear_0\.w": (None, "model"),
                r".*linear_0\.b": ("model",),
                r".*linear_1\.w": ("model", None),
            },
        )
    if importlib.util.find_spec("equinox") is not None:
        import equinox as eqx

        factories["equinox"] = (
            lambda: adapters.EquinoxLayer(
                eqx.nn.MLP(
                    FEATURES, OUTPUTS, HIDDEN, 1, activation=jnp.tanh, key=jax.random.key(0)
                ),
                name="model_layer",
            ),
            {
                r".*layers\.0\.weight": ("model", None),  # Equinox stores (out, in)
                r".*layers\.0\.bias": ("model",),
                r".*layers\.1\.weight": (None, "model"),
            },
        )
    return factories


def train_adapter(make_layer, distribution, initial) -> dict:
    keras.backend.clear_session()
    keras.distribution.set_distribution(distribution)
    layer = make_layer()
    model = keras.Sequential([keras.Input((FEATURES,)), layer])
    created = variable_shardings(layer)
    # Same starting point for both runs; `set_params` assigns through the layout.
    layer.set_params(initial)
    after_set = variable_shardings(layer)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = data()
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    report = {
        "created": created,
        "after_set_params": after_set,
        "after_fit": variable_shardings(layer),
        "losses": [float(v) for v in history.history["loss"]],
        "final": {v.name: np.asarray(v.value).tolist() for v in layer.trainable_weights},
    }
    keras.distribution.set_distribution(None)
    return report


def run_adapters(devices) -> dict:
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices=devices)
    reports = {}
    for name, (make_layer, layouts) in adapter_factories().items():
        keras.backend.clear_session()
        reference = make_layer()
        reference(np.zeros((1, FEATURES), "float32"))
        initial = jax.tree.map(np.asarray, reference.get_params())
        layout_map = keras.distribution.LayoutMap(mesh)
        for regex, layout in layouts.items():
            layout_map[regex] = layout
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
        reports[name] = {
            "initial": {v.name: np.asarray(v.value).tolist() for v in reference.trainable_weights},
            "distributed": train_adapter(make_layer, distribution, initial),
            "single_device": train_adapter(make_layer, None, initial),
        }
    return reports


def main(scenario: str) -> None:
    devices = keras.distribution.list_devices()
    if scenario == "adapters":
        report = {"num_devices": len(devices), "adapters": run_adapters(devices)}
        print("JSON:" + json.dumps(report))
        return
    if scenario == "data_parallel":
        distribution = keras.distribution.DataParallel(devices=devices)
        builds = ["params"]
    elif scenario == "model_parallel":
        mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices=devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        # Regexes over the variable paths `<model>/<layer>/<pytree path>`.
        layout_map[r".*dense.*kernel"] = (None, "model")
        layout_map[r".*dense\.bias"] = ("model",)
        layout_map[r".*out\.kernel"] = ("model", None)
        layout_map[r".*running\.mean"] = ("model",)
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
        builds = ["init_fn", "params"]
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    report = {
        "num_devices": len(devices),
        "initial": jax.tree.map(lambda a: a.tolist(), initial_params()),
        "distributed": {build: train(distribution, build) for build in builds},
        "single_device": train(None, builds[0]),
    }
    print("JSON:" + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
