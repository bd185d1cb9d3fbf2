"""The README's Python examples run, and every public name is documented."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxlayer
from conftest import BACKEND

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="the README examples run once, on the jax backend")


def _runnable(block: str) -> bool:
    # Fragments with `...` and the distribution example (it needs 8 devices,
    # covered by tests/test_distribution.py) are not standalone programs.
    return "..." not in block and "keras.distribution" not in block


def _np(x):
    return np.asarray(x)


def _names(layer):
    return sorted(v.name for v in layer.weights)


def _dropout_follows_the_flag(layer, x):
    """Inference is deterministic; training calls draw fresh masks."""
    np.testing.assert_array_equal(_np(layer(x)), _np(layer(x)))
    assert not np.array_equal(_np(layer(x, training=True)), _np(layer(x, training=True)))


def check_two_functions(ns):
    layer, model = ns["model"].layers[0], ns["model"]
    x = np.random.RandomState(1).rand(4, 64).astype("float32")
    # "called at build time, with placeholders of the input's shapes"
    assert {v.name: tuple(v.shape) for v in layer.weights} == {
        "dense.kernel": (64, 64),
        "dense.bias": (64,),
        "out.kernel": (64, 10),
        "out.bias": (10,),
    }
    assert int(model.optimizer.iterations) == 16  # fit ran: 256 / 32 batches x 2 epochs
    # "rng: a fresh key per training call, None in inference"
    _dropout_follows_the_flag(layer, x)
    expected = ns["call_fn"](layer.get_params(), None, x, False)
    np.testing.assert_allclose(_np(layer(x)), _np(expected), rtol=1e-5, atol=1e-5)


def check_get_params(ns):
    layer, params = ns["model"].layers[0], ns["params"]
    # "the params PyTree, as JAX arrays"
    assert jax.tree.structure(params) == jax.tree.structure(
        {"dense": {"bias": 0, "kernel": 0}, "out": {"bias": 0, "kernel": 0}}
    )
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
    assert ns["state"] is None  # this model has no state
    for a, b in zip(jax.tree.leaves(layer.get_params()), jax.tree.leaves(params)):
        np.testing.assert_array_equal(_np(a), _np(b))
    # "checks structure, shapes, dtypes; all or nothing"
    bad = {**params, "out": {"kernel": params["out"]["kernel"] * 0, "bias": np.zeros(3, "float32")}}
    with pytest.raises(ValueError, match=r"shape"):
        layer.set_params(bad)
    np.testing.assert_array_equal(_np(layer.get_params()["out"]["kernel"]), _np(params["out"]["kernel"]))


def check_portable(ns):
    # The block asserts the loaded class and equal predictions itself;
    # "fine-tunes": its weights moved from the saved ones.
    loaded = ns["loaded"].layers[0]
    assert not np.allclose(_np(loaded.get_params()["w"]), np.eye(3, dtype="float32"))
    np.testing.assert_array_equal(_np(ns["model"].layers[0].get_params()["w"]), np.eye(3))


def check_other_signatures(ns):
    # Both inputs are ones and both weights ones: every output is 32 + 32,
    # scaled by 1 / 0.9 where dropout kept it and 0 where it dropped it.
    outputs = _np(ns["outputs"])
    assert outputs.shape == (4, 10)
    assert set(np.unique(outputs).tolist()) <= {0.0, np.float32(64 / 0.9).item()}
    assert (outputs != 0).any()
    inputs = (np.ones((4, 32), "float32"), np.ones((4, 32), "float32"))
    np.testing.assert_array_equal(_np(ns["layer"](inputs)), np.full((4, 10), 64.0))


def check_haiku(ns):
    # "detects the transform kind": hk.transform (no state), rng for dropout
    layer = ns["layer"]
    assert _names(layer) == ["linear.b", "linear.w", "linear_1.b", "linear_1.w"]
    assert layer.get_state() is None
    _dropout_follows_the_flag(layer, np.ones((4, 64), "float32"))


def check_flax(ns):
    # '"params" trainable; batch_stats non-trainable, updated in training'
    layer, x = ns["layer"], np.random.RandomState(0).rand(4, 64).astype("float32")
    assert all(v.name.startswith("params.") for v in layer.trainable_weights)
    assert sorted(v.name for v in layer.non_trainable_weights) == [
        "batch_stats.BatchNorm_0.mean",
        "batch_stats.BatchNorm_0.var",
    ]
    before = _np(layer.get_state()["batch_stats"]["BatchNorm_0"]["mean"])
    layer(x)
    np.testing.assert_array_equal(_np(layer.get_state()["batch_stats"]["BatchNorm_0"]["mean"]), before)
    layer(x, training=True)
    assert not np.allclose(_np(layer.get_state()["batch_stats"]["BatchNorm_0"]["mean"]), before)


def check_nnx(ns):
    # "Keras's training flag switches train/eval mode": dropout only in training
    layer = ns["layer"]
    assert [n for n in _names(layer) if not n.startswith("drop.")] == [
        "hidden.bias",
        "hidden.kernel",
        "out.bias",
        "out.kernel",
    ]
    _dropout_follows_the_flag(layer, np.ones((4, 64), "float32"))


def check_equinox(ns):
    import equinox as eqx

    # "the eqx.Module with the trained values"
    layer, trained = ns["layer"], ns["trained"]
    assert isinstance(trained, eqx.nn.MLP)
    x = np.random.RandomState(0).rand(4, 64).astype("float32")
    np.testing.assert_allclose(_np(layer(x)), _np(jax.vmap(trained)(x)), rtol=1e-5, atol=1e-6)
    assert _names(layer) == sorted(f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias"))


# Each runnable block, found by a line of its own, and the check of what its
# comments say it shows.
CHECKS = {
    "def init_fn(rng, inputs):": check_two_functions,
    "params = model.layers[0].get_params()": check_get_params,
    "loaded = keras.models.load_model(path)": check_portable,
    "def my_model(params, rngs, x1, x2, deterministic):": check_other_signatures,
    "layer = HaikuLayer(hk.transform(forward), seed=0)": check_haiku,
    "layer = FlaxLayer(MLP())": check_flax,
    "layer = NnxLayer(MLP(nnx.Rngs(0)), seed=0)": check_nnx,
    "trained = layer.get_model()": check_equinox,
}


def _check_for(block: str):
    found = [check for marker, check in CHECKS.items() if marker in block]
    assert len(found) == 1, f"no single check in tests/test_readme.py for the README block:\n{block}"
    return found[0]


@pytest.mark.parametrize("index", [i for i, b in enumerate(BLOCKS) if _runnable(b)])
def test_readme_example_runs(index):
    block = BLOCKS[index]
    check = _check_for(block)
    for module in re.findall(r"^import (haiku|flax|equinox)", block, flags=re.M):
        pytest.importorskip(module)
    namespace = {}
    # Blocks build on the first one's imports (jax, keras, numpy, JaxLayer).
    exec(compile(BLOCKS[0] if index else "", "README-0", "exec"), namespace)
    exec(compile(block, f"README-{index}", "exec"), namespace)
    layer = namespace.get("layer")
    if layer is not None and "layer(" not in block:
        out = layer(np.ones((4, 64), "float32"))
        assert tuple(out.shape) == (4, 10)
        assert layer.count_params() > 0
    check(namespace)


def test_every_exported_name_is_documented():
    for name in jaxlayer.__all__:
        if name.startswith("__"):
            continue
        assert f"`{name}" in README or f"{name}(" in README, f"{name} is not in the README"
    for method in ["get_params", "set_params", "get_state", "set_state"]:
        assert method in README
