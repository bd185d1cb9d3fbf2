"""Trains JaxLayers under `keras.distribution` in one or several processes.

Run by `tests/test_multiprocess.py` twice per scenario list: as 2 processes
(each with 2 virtual CPU devices, started by
`jaxlayer.demo._local_processes.run_local_processes`, which sets the
`KERAS_DISTRIBUTION_*` variables that `keras.distribution.initialize()`
reads) and as 1 process holding 4 devices. Both see the same global batches:
the multi-process run feeds each process its own slice of every global batch
(`auto_shard_dataset = False`), or a global `tf.data` pipeline that Keras
shards per process. Usage:
`python train_multiprocess.py OUT_DIR SCENARIO [SCENARIO ...]`.

Process 0 writes `OUT_DIR/report.json`: per scenario the trained weights
(gathered to host with `jaxlayer.to_host`), the checks made after training,
and the paths of the files it saved, which the test loads in a single process.
"""

from __future__ import annotations

import json
import os
import sys

import keras

if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1:
    keras.distribution.initialize()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlayer  # noqa: E402
from jaxlayer import FlaxLayer, JaxLayer  # noqa: E402

FEATURES, HIDDEN, OUTPUTS = 4, 8, 2
SAMPLES, GLOBAL_BATCH = 32, 16
PROCESS, PROCESSES = jax.process_index(), jax.process_count()


# ---------------------------------------------------------------- models


def mlp_init(rng, inputs):
    k1, k2 = jax.random.split(rng)
    params = {
        "dense": {
            "kernel": jax.random.normal(k1, (inputs.shape[-1], HIDDEN)) * 0.5,
            "bias": jnp.zeros(HIDDEN),
        },
        "out": {"kernel": jax.random.normal(k2, (HIDDEN, OUTPUTS)) * 0.5, "bias": jnp.zeros(OUTPUTS)},
    }
    state = {"running": {"mean": jnp.zeros(inputs.shape[-1]), "steps": jnp.int32(0)}}
    return params, state


def mlp_call(params, state, rng, inputs, training):
    running = state["running"]
    hidden = jnp.tanh(inputs @ params["dense"]["kernel"] + params["dense"]["bias"])
    if training:
        # Statistics of the whole global batch, and a dropout mask from `rng`.
        running = {
            "mean": 0.9 * running["mean"] + 0.1 * inputs.mean(axis=0),
            "steps": running["steps"] + 1,
        }
        keep = jax.random.bernoulli(rng, 0.8, hidden.shape)
        hidden = jnp.where(keep, hidden / 0.8, 0.0)
    outputs = hidden @ params["out"]["kernel"] + params["out"]["bias"]
    return outputs, {"running": running}


def make_flax_module():
    import flax.linen as nn

    class BatchNormMLP(nn.Module):
        @nn.compact
        def __call__(self, x, training: bool = False):
            x = nn.Dense(HIDDEN, use_bias=False)(x)  # a bias before BatchNorm has no gradient
            x = nn.BatchNorm(use_running_average=not training, momentum=0.9)(x)
            x = nn.Dropout(0.2, deterministic=not training)(nn.relu(x))
            return nn.Dense(OUTPUTS)(x)

    return BatchNormMLP()


def make_layer(model: str, build: str):
    if model == "mlp":
        if build == "init_fn":
            return JaxLayer(mlp_call, mlp_init, seed=3, name="mlp")
        params, state = mlp_init(jax.random.key(7), np.zeros((1, FEATURES), "float32"))
        host = jax.tree.map(np.asarray, (params, state))  # plain host arrays, as users pass
        return JaxLayer(mlp_call, params=host[0], state=host[1], seed=3, name="mlp")
    if model == "flax_bn":
        return FlaxLayer(make_flax_module(), seed=3, name="flax_bn")
    if model == "haiku":
        import haiku as hk

        def mlp(x):
            return hk.nets.MLP([HIDDEN, OUTPUTS], activation=jnp.tanh)(x)

        return jaxlayer.HaikuLayer(hk.transform(mlp), name="haiku")
    if model == "nnx":
        from flax import nnx

        class NnxMLP(nnx.Module):
            def __init__(self, rngs):
                self.hidden = nnx.Linear(FEATURES, HIDDEN, rngs=rngs)
                self.out = nnx.Linear(HIDDEN, OUTPUTS, rngs=rngs)

            def __call__(self, x):
                return self.out(jnp.tanh(self.hidden(x)))

        return jaxlayer.NnxLayer(NnxMLP(nnx.Rngs(0)), name="nnx")
    if model == "equinox":
        import equinox as eqx

        mlp = eqx.nn.MLP(FEATURES, OUTPUTS, HIDDEN, 1, activation=jnp.tanh, key=jax.random.key(0))
        return jaxlayer.EquinoxLayer(mlp, name="equinox")
    raise ValueError(model)


# Keras matches the patterns against whole variable paths (`re.fullmatch`).
LAYOUTS = {
    "mlp": {".*mlp/dense.kernel": (None, "model"), ".*mlp/out.kernel": ("model", None)},
    "flax_bn": {".*flax_bn/.*Dense_0.kernel": (None, "model"), ".*flax_bn/.*Dense_1.kernel": ("model", None)},
    "haiku": {".*linear_0.w": (None, "model"), ".*linear_1.w": ("model", None)},
    "nnx": {".*hidden.kernel": (None, "model"), ".*out.kernel": ("model", None)},
    "equinox": {".*layers.0.weight": ("model", None), ".*layers.1.weight": (None, "model")},  # (out, in)
}

SCENARIOS = {
    # name: (strategy, model, build, feed)
    "dp_mlp_init_fn": ("data", "mlp", "init_fn", "arrays"),
    "mp_mlp_params": ("model", "mlp", "params", "arrays"),
    "dp_flax_bn_tf_data": ("data", "flax_bn", "init_fn", "tf_data"),
    "mp_flax_bn_arrays": ("model", "flax_bn", "init_fn", "arrays"),
    # The "model" axis spans the processes: each variable is split between
    # them, and every process feeds the whole global batch.
    "mp_cross_mlp_init_fn": ("model_across", "mlp", "init_fn", "full"),
    "mp_cross_haiku": ("model_across", "haiku", "init_fn", "full"),
    "mp_cross_nnx": ("model_across", "nnx", "init_fn", "full"),
    "mp_cross_equinox": ("model_across", "equinox", "init_fn", "full"),
}


def make_distribution(strategy: str, model: str):
    devices = keras.distribution.list_devices()
    assert len(devices) == 4, devices
    if strategy == "data":
        distribution = keras.distribution.DataParallel(devices=devices)
    else:
        # Devices are listed process by process: the mesh's first axis spans them.
        axes = ["batch", "model"] if strategy == "model" else ["model", "batch"]
        mesh = keras.distribution.DeviceMesh((2, 2), axes, devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        for pattern, axes in LAYOUTS[model].items():
            layout_map[pattern] = axes
        distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    distribution.auto_shard_dataset = False
    return distribution


# ---------------------------------------------------------------- data


def global_data() -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(1)
    x = rs.randn(SAMPLES, FEATURES).astype("float32")
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1).astype("float32")
    return x, y


def process_slice(a: np.ndarray) -> np.ndarray:
    """This process's rows of every global batch (what each process feeds)."""
    local = GLOBAL_BATCH // PROCESSES
    batches = a.reshape(SAMPLES // GLOBAL_BATCH, GLOBAL_BATCH, *a.shape[1:])
    return batches[:, PROCESS * local : (PROCESS + 1) * local].reshape(-1, *a.shape[1:])


def fit(model, distribution, feed: str) -> None:
    x, y = global_data()
    if feed == "tf_data":
        import tensorflow as tf

        # A global pipeline, as a user writes it; Keras shards it per process.
        distribution.auto_shard_dataset = True
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
        model.fit(dataset, epochs=2, verbose=0)
        distribution.auto_shard_dataset = False
    else:
        x, y = feed_slice(x, feed), feed_slice(y, feed)
        model.fit(x, y, batch_size=len(x) // (SAMPLES // GLOBAL_BATCH), epochs=2, shuffle=False, verbose=0)


def feed_slice(a: np.ndarray, feed: str) -> np.ndarray:
    """What this process feeds: its slice, or all of it when the batch axis is local."""
    return a if feed == "full" or PROCESSES == 1 else process_slice(a)


# ---------------------------------------------------------------- checks


def short_path(variable) -> str:
    """The variable's path inside its layer (`mlp/dense.kernel`)."""
    return "/".join(variable.path.split("/")[-2:])


def host_weights(layer) -> dict:
    """The layer's variables gathered to host, by path (a collective)."""
    values = jaxlayer.to_host([v.value for v in layer.weights])
    return {short_path(v): np.asarray(value).tolist() for v, value in zip(layer.weights, values)}


def shardings(layer) -> dict:
    """Each variable's partition spec, one entry per dimension."""
    specs = {}
    for v in layer.weights:
        spec = list(getattr(v.value.sharding, "spec", ()))
        spec += [None] * (len(v.shape) - len(spec))
        specs[short_path(v)] = str(spec)
    return specs


def check_set_params(layer) -> dict:
    """Every process passes the same full host tree; the layouts are kept."""
    before = shardings(layer)
    host = jaxlayer.to_host(layer.get_params())
    shifted = jax.tree.map(lambda a: a + 1.0, host)
    layer.set_params(shifted)
    after = jaxlayer.to_host(layer.get_params())
    equal = all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(shifted)))
    kept = shardings(layer) == before
    global_arrays = all(isinstance(a, jax.Array) for a in jax.tree.leaves(layer.get_params()))
    layer.set_params(host)
    state_host = jaxlayer.to_host(layer.get_state())
    layer.set_state(state_host)
    restored = all(
        np.allclose(a, b) for a, b in zip(jax.tree.leaves(jaxlayer.to_host(layer.get_params())), jax.tree.leaves(host))
    )
    return {"set_params_equal": equal, "layouts_kept": kept, "get_params_global": global_arrays, "restored": restored}


def save_path(out_dir: str, name: str) -> str:
    """Process 0 writes the real file; the others write a scratch copy."""
    if PROCESS == 0:
        return os.path.join(out_dir, name)
    return os.path.join(out_dir, f"scratch-{PROCESS}-{name}")


def run(name: str, out_dir: str) -> dict:
    strategy, model_name, build, feed = SCENARIOS[name]
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    distribution = make_distribution(strategy, model_name)
    keras.distribution.set_distribution(distribution)
    layer = make_layer(model_name, build)
    model = keras.Sequential([keras.Input((FEATURES,)), layer])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    initial = host_weights(layer)
    fit(model, distribution, feed)
    report = {"initial": initial, "final": host_weights(layer), "shardings": shardings(layer)}
    report.update(check_set_params(layer))
    # `model.predict` fails under several processes for Keras's own layers
    # too (it fetches the global outputs); `evaluate` works.
    x, y = global_data()
    x, y = feed_slice(x, feed), feed_slice(y, feed)
    report["evaluate"] = float(model.evaluate(x, y, batch_size=len(x) // (SAMPLES // GLOBAL_BATCH), verbose=0))

    # Every process saves (variables split across processes are gathered
    # inside `replicated_variables`, a collective); process 0 writes the file.
    with jaxlayer.replicated_variables(model):
        model.save_weights(save_path(out_dir, f"{name}.weights.h5"))
        model.save(save_path(out_dir, f"{name}.keras"))
    jax.experimental.multihost_utils.sync_global_devices(f"saved {name}")
    # Every process loads process 0's files back.
    model.load_weights(os.path.join(out_dir, f"{name}.weights.h5"))
    reloaded = keras.saving.load_model(os.path.join(out_dir, f"{name}.keras"))
    report["load_weights_equal"] = host_weights(layer) == report["final"]
    report["load_model_equal"] = host_weights(reloaded.layers[0]) == report["final"]
    report["load_model_shardings"] = shardings(reloaded.layers[0])
    report["files"] = {"weights": os.path.join(out_dir, f"{name}.weights.h5"), "keras": os.path.join(out_dir, f"{name}.keras")}
    keras.distribution.set_distribution(None)
    return report


def main() -> None:
    out_dir, names = sys.argv[1], sys.argv[2:]
    reports = {name: run(name, out_dir) for name in names}
    if PROCESS == 0:
        with open(os.path.join(out_dir, f"report-{PROCESSES}.json"), "w") as f:
            json.dump({"processes": PROCESSES, "devices": jax.device_count(), "scenarios": reports}, f)


if __name__ == "__main__":
    main()
