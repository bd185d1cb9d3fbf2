"""`load_checkpoint` / `save_checkpoint` / `LoadReport` (SPEC B11).

Checkpoints are written by each library's own tool (Orbax, flax.serialization,
safetensors, NumPy, Equinox) from models trained or initialised in pure JAX;
the layer's predictions must then equal the framework's own `apply`. Runs on
every backend (loading is inference; the fine-tuning test needs training).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND
from jaxlayer import FlaxLayer, JaxLayer, LoadReport

flax_linen = pytest.importorskip("flax.linen")
ocp = pytest.importorskip("orbax.checkpoint")

X = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
Y = np.random.default_rng(1).integers(0, 4, 16)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


class Net(flax_linen.Module):
    classes: int = 4

    @flax_linen.compact
    def __call__(self, x, training: bool = False):
        x = flax_linen.Dense(8)(x)
        x = flax_linen.BatchNorm(use_running_average=not training, momentum=0.5)(x)
        x = flax_linen.relu(x)
        return flax_linen.Dense(self.classes, name="head")(x)


@pytest.fixture(scope="module")
def pretrained():
    """A Flax model trained a few steps in pure JAX with optax: its `variables`."""
    optax = pytest.importorskip("optax")
    net = Net()
    variables = net.init(jax.random.key(0), X)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    tx = optax.adam(0.05)
    opt_state = tx.init(params)

    def loss_fn(params, state):
        logits, updates = net.apply({"params": params, **state}, X, training=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean(), updates

    @jax.jit
    def step(params, state, opt_state):
        (_, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state)
        changes, opt_state = tx.update(grads, opt_state)
        return jax.tree.map(lambda p, c: p + c, params, changes), updates, opt_state

    for _ in range(5):
        params, state, opt_state = step(params, state, opt_state)
    variables = {"params": params, **state}
    return jax.tree.map(np.asarray, variables)


def expected(variables):
    return np.asarray(Net().apply(variables, X, training=False))


def flax_layer(classes=4):
    layer = FlaxLayer(Net(classes))
    layer(X[:2])
    return layer


def weights(layer):
    return {v.name: to_numpy(v) for v in layer.weights}


def orbax_save(path, tree):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(path), tree)
    checkpointer.wait_until_finished()


# ------------------------------------------------------------------ formats


def _write_orbax(path, variables):
    orbax_save(path / "ckpt", variables)
    return path / "ckpt"


def _write_manager_step(path, variables):
    manager = ocp.CheckpointManager(os.path.abspath(path / "runs"))
    manager.save(3, args=ocp.args.StandardSave(variables))
    manager.wait_until_finished()
    return path / "runs" / "3"


def _write_msgpack(path, variables):
    from flax import serialization

    (path / "w.msgpack").write_bytes(serialization.to_bytes(variables))
    return path / "w.msgpack"


def _flat(variables, separator):
    return {
        separator.join(str(k.key) for k in p): np.asarray(leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]
    }


def _write_safetensors_numpy(path, variables):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file(_flat(variables, "/"), str(path / "w.safetensors"))
    return path / "w.safetensors"


def _write_safetensors_flax(path, variables):
    safetensors_flax = pytest.importorskip("safetensors.flax")
    flat = {k: jnp.asarray(v) for k, v in _flat(variables, ".").items()}
    safetensors_flax.save_file(flat, str(path / "w.safetensors"))
    return path / "w.safetensors"


def _write_npz(path, variables):
    np.savez(path / "w.npz", **_flat(variables, "."))
    return path / "w.npz"


WRITERS = {
    "orbax": _write_orbax,
    "checkpoint_manager_step": _write_manager_step,
    "msgpack": _write_msgpack,
    "safetensors_numpy": _write_safetensors_numpy,
    "safetensors_flax": _write_safetensors_flax,
    "npz": _write_npz,
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_loads_a_pure_jax_model_and_predicts_like_its_apply(fmt, pretrained, tmp_path):
    if BACKEND != "jax" and fmt not in ("orbax", "safetensors_numpy"):
        # Reading a file is the same on every backend; the assignment is the
        # same for every format: two formats prove the other backends.
        pytest.skip("file formats are read the same on every backend: checked on jax")
    path = WRITERS[fmt](tmp_path, pretrained)
    layer = flax_layer()
    report = layer.load_checkpoint(path)
    assert isinstance(report, LoadReport)
    assert sorted(report.loaded) == sorted(v.name for v in layer.weights)
    assert report.missing == report.unexpected == report.skipped == report.cast == []
    np.testing.assert_allclose(to_numpy(layer(X)), expected(pretrained), rtol=1e-5, atol=1e-5)


def test_in_memory_frozen_dict_and_the_source_stays_valid(pretrained):
    from flax.core import freeze

    source = jax.tree.map(jnp.asarray, pretrained)
    layer = flax_layer()
    layer.load_checkpoint(freeze(source))
    if BACKEND != "numpy":  # jax's trainer donates the variables' buffers
        model = keras.Sequential([keras.Input((6,)), layer])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    # The caller's arrays were copied, never handed over.
    for leaf in jax.tree.leaves(source):
        assert not leaf.is_deleted()
    np.testing.assert_allclose(np.asarray(source["params"]["head"]["bias"]), pretrained["params"]["head"]["bias"])


# ------------------------------------------------------------- the report


def test_replaced_head_with_skip_then_fine_tunes(pretrained, tmp_path):
    path = _write_orbax(tmp_path, pretrained)
    layer = flax_layer(classes=10)
    with pytest.raises(ValueError, match=r"params\.head\.kernel: source float32\[8, 4\], layer float32\[8, 10\]"):
        layer.load_checkpoint(path, strict=False)  # a mismatch raises even non-strict
    head_before = weights(layer)["params.head.kernel"]
    report = layer.load_checkpoint(path, skip=[r"^params\.head\."])
    assert sorted(report.skipped) == ["params.head.bias", "params.head.kernel"]
    assert "params.head.kernel" not in report.loaded and len(report.loaded) == 6
    now = weights(layer)
    np.testing.assert_array_equal(now["params.head.kernel"], head_before)  # kept its own
    np.testing.assert_array_equal(now["params.Dense_0.kernel"], pretrained["params"]["Dense_0"]["kernel"])
    text = str(report)
    assert "6 loaded" in text and "2 skipped" in text and "params.head.bias" in text
    if BACKEND == "numpy":
        return
    model = keras.Sequential([keras.Input((6,)), layer])
    model.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(X, Y, epochs=5, batch_size=16, verbose=0).history["loss"]
    assert losses[-1] < losses[0]


def test_strict_lists_missing_and_unexpected_then_non_strict_reports_them(pretrained):
    source = {"params": dict(pretrained["params"]), "extra": {"w": np.zeros((2, 3), "float32")}}
    del source["params"]["head"]
    layer = flax_layer()
    before = weights(layer)
    with pytest.raises(ValueError) as raised:
        layer.load_checkpoint(source)
    message = str(raised.value)
    assert "params.head.kernel float32[8, 4]" in message and "batch_stats.BatchNorm_0.mean" in message
    assert "extra.w float32[2, 3]" in message and "nothing was loaded" in message
    for name, value in weights(layer).items():  # a failed load changes nothing
        np.testing.assert_array_equal(value, before[name])
    report = layer.load_checkpoint(source, strict=False)
    assert sorted(report.missing) == [
        "batch_stats.BatchNorm_0.mean",
        "batch_stats.BatchNorm_0.var",
        "params.head.bias",
        "params.head.kernel",
    ]
    assert report.unexpected == ["extra.w"]
    np.testing.assert_array_equal(weights(layer)["params.head.bias"], before["params.head.bias"])


def test_rename_by_regex_and_by_callable(pretrained):
    prefixed = {"model": {"encoder": pretrained["params"]}, "stats": pretrained["batch_stats"]}
    layer = flax_layer()
    report = layer.load_checkpoint(
        prefixed, rename={r"^model\.encoder\.": "params.", r"^stats\.": "batch_stats."}
    )
    assert len(report.loaded) == 8
    np.testing.assert_allclose(to_numpy(layer(X)), expected(pretrained), rtol=1e-5, atol=1e-5)

    def drop_stats(name):
        return None if name.startswith("batch_stats") else name

    report = flax_layer().load_checkpoint(pretrained, rename=drop_stats, strict=False)
    assert sorted(report.skipped) == ["batch_stats.BatchNorm_0.mean", "batch_stats.BatchNorm_0.var"]
    assert sorted(report.missing) == sorted(report.skipped)
    with pytest.raises(ValueError, match="both become"):
        flax_layer().load_checkpoint(pretrained, rename={r"\.(mean|var)$": ".x"})


def test_bfloat16_checkpoint_is_cast_and_reported(pretrained, tmp_path):
    bf16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), pretrained)
    path = _write_orbax(tmp_path, bf16)
    layer = flax_layer()
    report = layer.load_checkpoint(path)
    assert sorted(report.cast) == sorted(report.loaded) and len(report.cast) == 8
    assert "(bfloat16 -> float32)" in str(report)
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in layer.weights)
    np.testing.assert_allclose(to_numpy(layer(X)), expected(pretrained), rtol=0.05, atol=0.05)


def test_separators_dot_slash_and_haiku_tilde_compare_alike():
    params = {"mlp/~/linear_0": {"w": jnp.zeros((3, 2))}}
    layer = JaxLayer(lambda params, inputs: inputs @ params["mlp/~/linear_0"]["w"], params=params)
    assert [v.name for v in layer.weights] == ["mlp.linear_0.w"]
    report = layer.load_checkpoint({"mlp/~/linear_0/w": np.ones((3, 2), "float32")})
    assert report.loaded == ["mlp.linear_0.w"]
    np.testing.assert_array_equal(to_numpy(layer.weights[0]), np.ones((3, 2)))


def test_errors(tmp_path, monkeypatch):
    unbuilt = FlaxLayer(Net())
    with pytest.raises(ValueError, match="before it was built.*call it once"):
        unbuilt.load_checkpoint({})
    layer = flax_layer()
    with pytest.raises(FileNotFoundError, match="nowhere.msgpack"):
        layer.load_checkpoint(tmp_path / "nowhere.msgpack")
    (tmp_path / "weights.bin").write_bytes(b"123")
    with pytest.raises(ValueError, match=r"cannot tell the format of .*weights\.bin"):
        layer.load_checkpoint(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an Orbax checkpoint"):
        layer.load_checkpoint(tmp_path / "empty")
    with pytest.raises(ValueError, match="skip"):
        layer.load_checkpoint({}, skip=["("])
    with pytest.raises(TypeError, match="rename"):
        layer.load_checkpoint({}, rename=3)
    with pytest.raises(ValueError, match="Equinox file"):
        (tmp_path / "m.eqx").write_bytes(b"")
        layer.load_checkpoint(tmp_path / "m.eqx")
    with pytest.raises(ValueError, match="unknown format"):
        layer.save_checkpoint(tmp_path / "x", format="pickle")
    # A missing package names the extra to install.
    import importlib

    real = importlib.import_module

    def without_safetensors(name, *args):
        if name.startswith("safetensors"):
            raise ImportError("No module named 'safetensors'")
        return real(name, *args)

    (tmp_path / "w.safetensors").write_bytes(b"")
    monkeypatch.setattr(importlib, "import_module", without_safetensors)
    with pytest.raises(ImportError, match=r'pip install "jaxlayer\[checkpoints\]"'):
        layer.load_checkpoint(tmp_path / "w.safetensors")


def test_checkpoint_manager_root_asks_for_a_step(pretrained, tmp_path):
    _write_manager_step(tmp_path, pretrained)
    with pytest.raises(ValueError, match=r"steps 3: pass one step's directory"):
        flax_layer().load_checkpoint(tmp_path / "runs")


# ------------------------------------------------------------- adapters


def test_haiku_from_safetensors_and_params_state_tuple(tmp_path):
    hk = pytest.importorskip("haiku")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from jaxlayer import HaikuLayer

    def net(x, is_training):
        x = hk.Linear(8)(x)
        x = hk.BatchNorm(True, True, 0.9)(x, is_training)
        return hk.Linear(3)(x)

    transformed = hk.transform_with_state(net)
    params, state = transformed.init(jax.random.key(1), X, True)
    flat = {f"{m}/{k}": np.asarray(v) for tree in (params, state) for m, d in tree.items() for k, v in d.items()}
    safetensors_numpy.save_file(flat, str(tmp_path / "h.safetensors"))  # keys like batch_norm/~/mean_ema/average
    want, _ = transformed.apply(params, state, None, X, False)
    for source in (tmp_path / "h.safetensors", (params, state)):
        layer = HaikuLayer(transformed)
        layer(X[:2])
        report = layer.load_checkpoint(source)
        assert len(report.loaded) == 12 and "batch_norm.mean_ema.average" in report.loaded
        np.testing.assert_allclose(to_numpy(layer(X)), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_nnx_from_an_orbax_saved_state_and_a_module(tmp_path):
    nnx = pytest.importorskip("flax.nnx")
    from jaxlayer import NnxLayer

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(6, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.out = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.bn(self.lin(x)))

    source = Model(nnx.Rngs(1))
    orbax_save(tmp_path / "nnx", nnx.state(source))  # paths end in `.value`
    source.eval()
    want = np.asarray(source(X))
    for checkpoint in (tmp_path / "nnx", source):
        layer = NnxLayer(Model(nnx.Rngs(2)))
        layer(X[:2])
        report = layer.load_checkpoint(checkpoint)
        assert sorted(report.loaded) == sorted(v.name for v in layer.weights)
        np.testing.assert_allclose(to_numpy(layer(X)), want, rtol=1e-5, atol=1e-5)


def test_equinox_from_its_own_file_and_back(tmp_path):
    eqx = pytest.importorskip("equinox")
    from jaxlayer import EquinoxLayer

    mlp = eqx.nn.MLP(6, 3, 8, 2, key=jax.random.key(0))
    eqx.tree_serialise_leaves(tmp_path / "m.eqx", mlp)
    layer = EquinoxLayer(eqx.nn.MLP(6, 3, 8, 2, key=jax.random.key(1)))
    layer(X[:2])
    report = layer.load_checkpoint(tmp_path / "m.eqx")
    assert sorted(report.loaded) == sorted(v.name for v in layer.weights)
    want = np.asarray(jax.vmap(mlp)(X))
    np.testing.assert_allclose(to_numpy(layer(X)), want, rtol=1e-5, atol=1e-5)
    wide = EquinoxLayer(eqx.nn.MLP(6, 3, 16, 2, key=jax.random.key(1)))
    wide(X[:2])
    with pytest.raises(ValueError, match=r"layers\.0\.weight: source float32\[8, 6\], layer float32\[16, 6\]"):
        wide.load_checkpoint(tmp_path / "m.eqx")
    layer.save_checkpoint(tmp_path / "back.eqx")
    back = eqx.tree_deserialise_leaves(tmp_path / "back.eqx", eqx.nn.MLP(6, 3, 8, 2, key=jax.random.key(5)))
    np.testing.assert_allclose(np.asarray(jax.vmap(back)(X)), want, rtol=1e-5, atol=1e-5)



def test_equinox_file_with_python_scalars_loads_strictly(tmp_path):
    # Equinox writes a model's Python floats and bools (Dropout's `p`, its
    # `inference` flag) into the file; they are settings, not weights.
    eqx = pytest.importorskip("equinox")
    from jaxlayer import EquinoxLayer

    def make(seed):
        a, b = jax.random.split(jax.random.key(seed))
        return eqx.nn.Sequential([eqx.nn.Linear(6, 8, key=a), eqx.nn.Dropout(0.25), eqx.nn.Linear(8, 3, key=b)])

    saved = eqx.nn.inference_mode(make(0))
    eqx.tree_serialise_leaves(tmp_path / "m.eqx", saved)
    layer = EquinoxLayer(make(1))
    layer(X[:2])
    report = layer.load_checkpoint(tmp_path / "m.eqx")  # strict
    assert sorted(report.loaded) == sorted(v.name for v in layer.weights)
    assert not report.unexpected
    np.testing.assert_allclose(to_numpy(layer(X)), np.asarray(jax.vmap(saved)(X)), rtol=1e-5, atol=1e-5)

# ------------------------------------------------------------ write-back

RESTORE_WITHOUT_JAXLAYER = r"""
import json, sys
import importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jaxlayer", "keras"):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
import numpy as np, jax, jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import serialization
import safetensors.numpy
root, x = sys.argv[1], np.load(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from checkpoint_net import Net
out = {}
variables = ocp.StandardCheckpointer().restore(root + "/orbax")
out["orbax"] = np.asarray(Net().apply(variables, x, training=False)).tolist()
template = jax.tree.map(jnp.zeros_like, variables)
with open(root + "/w.msgpack", "rb") as f:
    restored = serialization.from_bytes(template, f.read())
out["msgpack"] = np.asarray(Net().apply(restored, x, training=False)).tolist()
flat = safetensors.numpy.load_file(root + "/w.safetensors")
out["safetensors_keys"] = sorted(flat)
npz = np.load(root + "/w.npz")
out["npz_keys"] = sorted(npz.files)
print("JSON:" + json.dumps(out))
"""


def test_write_back_restores_with_the_frameworks_own_tools_without_jaxlayer(pretrained, tmp_path):
    layer = flax_layer()
    layer.load_checkpoint(pretrained)
    if BACKEND != "numpy":  # fine-tune a little, so the written values are the layer's
        model = keras.Sequential([keras.Input((6,)), layer])
        model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    ours = to_numpy(layer(X))
    for name in ("orbax", "w.msgpack", "w.safetensors", "w.npz"):
        layer.save_checkpoint(tmp_path / name)
    np.save(tmp_path / "x.npy", X)
    helper = tmp_path / "helper"
    helper.mkdir()
    (helper / "checkpoint_net.py").write_text(
        "import flax.linen as nn\n\n"
        "class Net(nn.Module):\n"
        "    classes: int = 4\n\n"
        "    @nn.compact\n"
        "    def __call__(self, x, training: bool = False):\n"
        "        x = nn.Dense(8)(x)\n"
        "        x = nn.BatchNorm(use_running_average=not training, momentum=0.5)(x)\n"
        "        x = nn.relu(x)\n"
        "        return nn.Dense(self.classes, name='head')(x)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", RESTORE_WITHOUT_JAXLAYER, str(tmp_path), str(tmp_path / "x.npy"), str(helper)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("JSON:")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    out = json.loads(lines[0][5:])
    np.testing.assert_allclose(np.asarray(out["orbax"]), ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["msgpack"]), ours, rtol=1e-5, atol=1e-5)
    assert "params.Dense_0.kernel" in out["safetensors_keys"]
    assert out["npz_keys"] == out["safetensors_keys"]


def test_plain_layer_round_trip_keeps_params_and_state_apart(tmp_path):
    def call_fn(params, state, inputs):
        return inputs @ params["w"], {"count": state["count"] + 1}

    layer = JaxLayer(call_fn, params={"w": np.eye(3, dtype="float32")}, state={"count": np.int32(4)})
    for name in ("ck", "w.msgpack", "w.safetensors", "w.npz"):
        layer.save_checkpoint(tmp_path / name)
        other = JaxLayer(call_fn, params={"w": np.zeros((3, 3), "float32")}, state={"count": np.int32(0)})
        report = other.load_checkpoint(tmp_path / name)
        assert sorted(report.loaded) == ["count", "w"], name
        np.testing.assert_array_equal(to_numpy(other.weights[0]), np.eye(3))
        assert int(to_numpy(other.non_trainable_weights[0])) == 4
    restored = ocp.StandardCheckpointer().restore(os.path.abspath(tmp_path / "ck"))
    assert isinstance(restored, list) and restored[1]["count"] == 4  # (params, state)


# ---------------------------------------------------- keras.distribution

SHARDED_LOAD = r"""
import json, os, sys
import numpy as np, jax, keras
import orbax.checkpoint as ocp
from jaxlayer import JaxLayer

root = sys.argv[1]
params = {"dense": {"kernel": np.arange(64 * 32, dtype="float32").reshape(64, 32) / 100,
                    "bias": np.linspace(-1, 1, 32).astype("float32")},
          "out": {"kernel": np.ones((32, 8), "float32") / 7}}
c = ocp.StandardCheckpointer(); c.save(root + "/ckpt", params); c.wait_until_finished()

def call_fn(params, inputs):
    h = jax.nn.relu(inputs @ params["dense"]["kernel"] + params["dense"]["bias"])
    return h @ params["out"]["kernel"]

def zeros():
    return jax.tree.map(np.zeros_like, params)

x = np.random.default_rng(0).normal(size=(8, 64)).astype("float32")
single = JaxLayer(call_fn, params=zeros())
single.load_checkpoint(root + "/ckpt")
expected = np.asarray(single(x))

mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"])
layout = keras.distribution.LayoutMap(mesh)
layout[".*dense.kernel"] = (None, "model")
layout[".*out.kernel"] = ("model", None)
keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
layer = JaxLayer(call_fn, params=zeros())
report = layer.load_checkpoint(root + "/ckpt")
out = {"loaded": sorted(report.loaded), "specs": {}, "equal": True}
for v in layer.weights:
    out["specs"][v.name] = [str(s) for s in v.value.sharding.spec]
    out["equal"] &= bool(np.array_equal(np.asarray(v.value), np.asarray(single.weights[[w.name for w in single.weights].index(v.name)].value)))
out["outputs_close"] = bool(np.allclose(np.asarray(layer(x)), expected, atol=1e-5))
print("JSON:" + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution is implemented on the jax backend only")
def test_model_parallel_load_puts_each_array_in_its_layout(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_LOAD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(
            os.environ,
            KERAS_BACKEND="jax",
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=8",
        ),
        cwd=Path(__file__).parent,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("JSON:")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    out = json.loads(lines[0][5:])
    assert out["loaded"] == ["dense.bias", "dense.kernel", "out.kernel"]
    assert out["specs"]["dense.kernel"] == ["None", "model"]
    assert out["specs"]["out.kernel"] == ["model", "None"]
    assert out["equal"] and out["outputs_close"]


# ------------------------------------------------------------- inspect


@pytest.mark.skipif(BACKEND != "jax", reason="reads files only: one backend proves it")
def test_inspect_prints_a_checkpoint_and_the_report_against_a_keras_file(pretrained, tmp_path, capsys):
    from jaxlayer import cli

    path = _write_orbax(tmp_path, pretrained)
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "8 arrays, 124 values, 496 bytes" in out
    assert re.search(r"params\.Dense_0\.kernel +float32\[6, 8\]", out) and "batch_stats.BatchNorm_0.mean" in out

    model = keras.Sequential([keras.Input((6,)), flax_layer(classes=10)])
    model.save(tmp_path / "m.keras")
    assert cli.main(["inspect", str(path), "--against", str(tmp_path / "m.keras")]) == 0
    out = capsys.readouterr().out
    assert "6 loaded" in out and "2 mismatched" in out
    assert "params.head.kernel: source float32[8, 4], layer float32[8, 10]" in out
    assert cli.main(["inspect", str(tmp_path / "missing.npz")]) == 2
    assert "cannot read" in capsys.readouterr().err
