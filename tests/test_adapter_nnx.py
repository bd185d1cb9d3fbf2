"""B3: `NnxLayer` (Flax NNX) against the module's own call."""

from __future__ import annotations

import sys

import jax
import keras
import numpy as np
import pytest

from adapter_core import check_build_call_fit, regression_data
from conftest import BACKEND, to_numpy, tree_allclose
from digits import fit_and_check_digits

nnx = pytest.importorskip("flax.nnx", reason="Flax is not installed")

from jaxlayer import JaxLayer, NnxLayer  # noqa: E402

X = np.linspace(-1, 1, 40, dtype="float32").reshape(5, 8)


@keras.saving.register_keras_serializable(package="jaxlayer_tests")
class NnxMLP(nnx.Module):
    def __init__(self, din=8, hidden=32, dout=10, *, rngs):
        self.din, self.hidden, self.dout = din, hidden, dout
        self.layers = nnx.List(
            [nnx.Linear(din, hidden, rngs=rngs), nnx.Linear(hidden, dout, rngs=rngs)]
        )
        self.bn = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
        x = self.bn(nnx.relu(self.layers[0](x)))
        return self.layers[1](self.dropout(x))

    def get_config(self):
        return {"din": self.din, "hidden": self.hidden, "dout": self.dout}


def _module(seed=0, **kwargs):
    return NnxMLP(rngs=nnx.Rngs(seed, dropout=seed + 1), **kwargs)




def test_outputs_match_the_module_in_eval_mode():
    module = _module()
    layer = NnxLayer(module)
    out = to_numpy(layer(X))
    module.eval()
    np.testing.assert_allclose(out, module(X), rtol=1e-5, atol=1e-6)
    assert isinstance(layer, JaxLayer)


def test_param_and_state_split_and_names():
    module = _module()
    layer = NnxLayer(module)
    trainable = sorted(v.name for v in layer.trainable_weights)
    assert trainable == [
        "bn.bias",
        "bn.scale",
        "layers.0.bias",
        "layers.0.kernel",
        "layers.1.bias",
        "layers.1.kernel",
    ]
    state = sorted(v.name for v in layer.non_trainable_weights)
    assert state == ["bn.mean", "bn.var", "dropout.rngs.count", "dropout.rngs.key"]
    # Typed keys are stored as their key data, uint32 bit-cast to int32.
    assert {layer.state["dropout"]["rngs"][k].dtype for k in ("key", "count")} == {"int32"}
    # Counted from the architecture (din=8, hidden=32, dout=10): two Linear
    # layers with biases and BatchNorm's scale and bias.
    expected = (8 * 32 + 32) + (32 * 10 + 10) + 2 * 32
    assert sum(np.size(v) for v in jax.tree.leaves(nnx.state(module, nnx.Param))) == expected
    assert sum(np.size(v) for v in layer.trainable_weights) == expected
    assert layer.count_framework_params() == expected


def test_custom_variable_types_are_state():
    class Counter(nnx.Variable):
        pass

    class Counting(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(8, 2, rngs=nnx.Rngs(0))
            self.calls = Counter(np.zeros((), "int32"))

        def __call__(self, x):
            self.calls.value += 1
            return self.linear(x)

    layer = NnxLayer(Counting())
    assert [v.name for v in layer.non_trainable_weights] == ["calls"]
    layer(X)
    layer(X)
    assert int(to_numpy(layer.state["calls"])) == 2


@pytest.mark.needs_training
def test_training_flag_switches_dropout_and_batchnorm():
    module = _module()
    layer = NnxLayer(module, seed=3)
    before = layer.get_state()
    np.testing.assert_array_equal(to_numpy(layer(X)), to_numpy(layer(X)))
    tree_allclose(layer.get_state()["bn"], before["bn"])  # eval: running statistics
    a = to_numpy(layer(X, training=True))
    b = to_numpy(layer(X, training=True))
    assert not np.allclose(a, b)  # dropout active, fresh masks
    assert not np.allclose(to_numpy(layer.state["bn"]["mean"]), before["bn"]["mean"])


@pytest.mark.needs_training
def test_same_seed_gives_same_masks_whatever_the_module_rngs():
    first = NnxLayer(_module(seed=0), seed=11)
    second = NnxLayer(_module(seed=0), seed=11)
    second.set_state(
        second.get_state()
        | {"dropout": {"rngs": {"count": np.int32(5), "key": np.array([1, 2], "int32")}}}
    )
    np.testing.assert_allclose(
        to_numpy(first(X, training=True)), to_numpy(second(X, training=True)), rtol=1e-6
    )
    other = NnxLayer(_module(seed=0), seed=12)
    assert not np.allclose(to_numpy(first(X, training=True)), to_numpy(other(X, training=True)))


def test_get_module_and_update_give_the_same_outputs():
    module = _module()
    layer = NnxLayer(module)
    layer(X)
    layer.set_params(jax.tree.map(lambda p: p * 0.5, layer.get_params()))
    copy = layer.get_module()
    copy.eval()
    np.testing.assert_allclose(to_numpy(layer(X)), copy(X), rtol=1e-5, atol=1e-6)
    nnx.update(module, layer.get_params())
    module.eval()
    np.testing.assert_allclose(to_numpy(layer(X)), module(X), rtol=1e-5, atol=1e-6)


@pytest.mark.nnx_mode
@pytest.mark.needs_training
def test_core_build_call_fit():
    x, y = regression_data(8, 10)

    def reference(layer):
        module = layer.get_module()
        module.eval()
        return module(x)

    check_build_call_fit(NnxLayer(_module(), seed=0), x, y, reference)


@pytest.mark.needs_training
def test_fit_on_digits_reaches_90_percent():
    fit_and_check_digits(NnxLayer(_module(din=64), seed=0))


def test_model_save_and_load_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((8,)), NnxLayer(_module(hidden=8), seed=0)])
    if BACKEND != "numpy":
        model(X, training=True)
    expected = to_numpy(model(X))
    path = tmp_path / "nnx.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], NnxLayer)
    np.testing.assert_array_equal(to_numpy(loaded(X)), expected)
    assert [v.name for v in loaded.weights] == [v.name for v in model.weights]


def test_unregistered_module_saves_portably_or_fails_with_save_as_source(tmp_path):
    from jaxlayer import PortableLayer

    def build(seed, **kwargs):
        return keras.Sequential(
            [keras.Input((8,)), NnxLayer(nnx.Linear(8, 3, rngs=nnx.Rngs(seed)), **kwargs)]
        )

    model = build(0)
    model.save(tmp_path / "portable.keras")
    loaded = keras.models.load_model(tmp_path / "portable.keras")
    assert isinstance(loaded.layers[0], PortableLayer)
    np.testing.assert_array_equal(to_numpy(loaded(X)), to_numpy(model(X)))
    with pytest.raises(ValueError, match=r"model class `Linear` is not registered"):
        build(0, save_as="source").save(tmp_path / "linear.keras")
    model.save_weights(tmp_path / "linear.weights.h5")
    fresh = build(1)
    assert not np.allclose(to_numpy(fresh(X)), to_numpy(model(X)))
    fresh.load_weights(tmp_path / "linear.weights.h5")
    np.testing.assert_array_equal(to_numpy(fresh(X)), to_numpy(model(X)))


def test_wrong_object_names_the_right_adapter():
    import flax.linen as linen

    with pytest.raises(TypeError, match="FlaxLayer"):
        NnxLayer(linen.Dense(3))
    with pytest.raises(TypeError, match="flax.nnx.Module"):
        NnxLayer(NnxMLP)  # the class, not a constructed module


def test_missing_flax_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flax", None)
    monkeypatch.setitem(sys.modules, "flax.nnx", None)
    with pytest.raises(ImportError, match=r'pip install "jaxlayer\[flax\]"'):
        NnxLayer(object())
