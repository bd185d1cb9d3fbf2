"""B3: `EquinoxLayer` against the Equinox model called under `jax.vmap`."""

from __future__ import annotations

import functools
import sys

import jax
import keras
import numpy as np
import pytest

from adapter_core import check_build_call_fit, regression_data
from conftest import BACKEND, to_numpy, tree_allclose
from digits import fit_and_check_digits

eqx = pytest.importorskip("equinox", reason="Equinox is not installed")

from jaxlayer import EquinoxLayer, JaxLayer  # noqa: E402

X = np.linspace(-1, 1, 40, dtype="float32").reshape(5, 8)


class Net(eqx.Module):
    """Per-example model with BatchNorm (state) and Dropout (key)."""

    layers: list
    bn: eqx.nn.BatchNorm
    dropout: eqx.nn.Dropout

    def __init__(self, din, hidden, dout, key):
        k1, k2 = jax.random.split(key)
        self.layers = [eqx.nn.Linear(din, hidden, key=k1), eqx.nn.Linear(hidden, dout, key=k2)]
        self.bn = eqx.nn.BatchNorm(hidden, axis_name="batch", momentum=0.9, mode="batch")
        self.dropout = eqx.nn.Dropout(0.2)

    def __call__(self, x, state, *, key=None):
        x = jax.nn.relu(self.layers[0](x))
        x, state = self.bn(x, state)
        x = self.dropout(x, key=key)
        return self.layers[1](x), state


def _net(din=8, hidden=32, dout=10, seed=0):
    return eqx.nn.make_with_state(Net)(din, hidden, dout, jax.random.key(seed))


def _mlp(seed=0):
    return eqx.nn.MLP(8, 3, 16, 2, key=jax.random.key(seed))




def _reference(model, state, x):
    model = eqx.nn.inference_mode(model)
    return jax.vmap(model, in_axes=(0, None), out_axes=(0, None), axis_name="batch")(x, state)


def test_outputs_match_vmapped_model_in_inference_mode():
    model, state = _net()
    layer = EquinoxLayer(model, state)
    expected, _ = _reference(model, state, X)
    np.testing.assert_allclose(to_numpy(layer(X)), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(layer, JaxLayer)
    # The user's State is still usable: the layer never consumed it.
    _reference(model, state, X)


def test_stateless_model_and_unmapped_model():
    model = _mlp()
    layer = EquinoxLayer(model)
    np.testing.assert_allclose(to_numpy(layer(X)), jax.vmap(model)(X), rtol=1e-5, atol=1e-6)

    class Batched(eqx.Module):
        linear: eqx.nn.Linear

        def __call__(self, batch):
            return jax.vmap(self.linear)(batch) - batch.mean()

    batched = Batched(eqx.nn.Linear(8, 2, key=jax.random.key(1)))
    unmapped = EquinoxLayer(batched, vmap=False)
    np.testing.assert_allclose(to_numpy(unmapped(X)), batched(X), rtol=1e-5, atol=1e-6)


def test_names_split_and_param_count():
    model, state = _net()
    layer = EquinoxLayer(model, state)
    assert sorted(v.name for v in layer.trainable_weights) == [
        "bn.bias",
        "bn.weight",
        "layers.0.bias",
        "layers.0.weight",
        "layers.1.bias",
        "layers.1.weight",
    ]
    state_names = sorted(v.name for v in layer.non_trainable_weights)
    assert all(name.startswith("bn.") for name in state_names) and state_names
    # Counted from the architecture (din=8, hidden=32, dout=10): two Linear
    # layers with biases and BatchNorm's weight and bias.
    expected = (8 * 32 + 32) + (32 * 10 + 10) + 2 * 32
    params, _ = eqx.partition(model, eqx.is_inexact_array)
    assert sum(np.size(v) for v in jax.tree.leaves(params)) == expected
    assert sum(np.size(v) for v in layer.trainable_weights) == expected
    assert layer.count_framework_params() == expected


def test_static_leaves_never_become_variables():
    class WithInts(eqx.Module):
        linear: eqx.nn.Linear
        table: jax.Array
        activation: object = jax.nn.relu

        def __call__(self, x):
            return self.activation(self.linear(x)) + self.table.sum()

    model = WithInts(eqx.nn.Linear(8, 2, key=jax.random.key(0)), np.arange(3, dtype="int32"))
    layer = EquinoxLayer(model)
    assert sorted(v.name for v in layer.weights) == ["linear.bias", "linear.weight"]
    np.testing.assert_allclose(to_numpy(layer(X)), jax.vmap(model)(X), rtol=1e-5, atol=1e-6)


@pytest.mark.needs_training
def test_training_flag_drives_dropout_key_and_batchnorm_state():
    model, state = _net()
    layer = EquinoxLayer(model, state, seed=5)
    before = layer.get_state()
    np.testing.assert_array_equal(to_numpy(layer(X)), to_numpy(layer(X)))
    tree_allclose(layer.get_state(), before)
    a = to_numpy(layer(X, training=True))
    b = to_numpy(layer(X, training=True))
    assert not np.allclose(a, b)  # fresh key per call (and per example)
    after = layer.get_state()
    assert not all(
        np.allclose(x, y)
        for x, y in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True)
    )
    # The layer's state is a valid eqx.nn.State for the model.
    expected, _ = _reference(layer.get_model(), layer.get_eqx_state(), X)
    np.testing.assert_allclose(to_numpy(layer(X)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.needs_training
def test_same_seed_same_masks():
    model, state = _net()
    first = EquinoxLayer(model, state, seed=9)
    second = EquinoxLayer(model, state, seed=9)
    np.testing.assert_allclose(
        to_numpy(first(X, training=True)), to_numpy(second(X, training=True)), rtol=1e-6
    )


def test_params_go_back_into_equinox():
    model = _mlp()
    layer = EquinoxLayer(model)
    layer.set_params(jax.tree.map(lambda p: p * 0.5, layer.get_params()))
    combined = eqx.combine(layer.get_params(), eqx.partition(model, eqx.is_inexact_array)[1])
    np.testing.assert_allclose(to_numpy(layer(X)), jax.vmap(combined)(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(layer(X)), jax.vmap(layer.get_model())(X), rtol=1e-5, atol=1e-6
    )


def test_custom_axis_name():
    class Centered(eqx.Module):
        linear: eqx.nn.Linear

        def __call__(self, x):
            y = self.linear(x)
            return y - jax.lax.pmean(y, "examples")

    model = Centered(eqx.nn.Linear(8, 2, key=jax.random.key(0)))
    layer = EquinoxLayer(model, axis_name="examples")
    out = to_numpy(layer(X))
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)


@pytest.mark.nnx_mode
@pytest.mark.needs_training
def test_core_build_call_fit():
    model, state = _net()
    x, y = regression_data(8, 10)

    def reference(layer):
        return _reference(layer.get_model(), layer.get_eqx_state(), x)[0]

    check_build_call_fit(EquinoxLayer(model, state, seed=0), x, y, reference)


@pytest.mark.needs_training
def test_fit_on_digits_reaches_90_percent():
    model, state = _net(din=64)
    # Graph mode on every backend. 1472 samples = 23 batches of 64, all of one
    # size: in training, eqx.nn.BatchNorm's `pmean` over the vmapped batch
    # needs a concrete batch size under jax2tf (the next test).
    fit_and_check_digits(EquinoxLayer(model, state, seed=0), train_samples=1472)


def _batch_stats_reference(model, state, x, batch_size):
    """eqx.nn.BatchNorm's state after training-mode calls on each batch."""
    for start in range(0, len(x), batch_size):
        call = functools.partial(model, key=jax.random.key(0))  # dropout comes after BatchNorm
        _, state = jax.vmap(call, in_axes=(0, None), out_axes=(0, None), axis_name="batch")(
            x[start : start + batch_size], state
        )
    return state


@pytest.mark.needs_training
def test_batchnorm_fit_with_a_partial_last_batch():
    """10 samples in batches of 4: the last batch has 2. Graph-mode `fit` runs
    it on jax and torch. On tensorflow, Keras traces the step once with an
    unknown batch size, and jax2tf cannot convert BatchNorm's `pmean` over a
    symbolic batch (a jax limitation: `pmean` needs the axis size as a
    number); graph mode raises the bridge's error naming the fixes, and
    `run_eagerly=True` (one conversion per batch size) trains."""
    model, state = _net()
    x, y = regression_data(8, 10, samples=10)

    def fit(run_eagerly):
        layer = EquinoxLayer(model, state, seed=0)
        keras_model = keras.Sequential([keras.Input((8,)), layer])
        # lr=0: the parameters stay put, so the statistics have a reference.
        keras_model.compile(keras.optimizers.SGD(0.0), "mse", run_eagerly=run_eagerly)
        keras_model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        return layer

    if BACKEND == "tensorflow":
        with pytest.raises(
            ValueError,
            match=r"(?s)symbolic batch dimension \(InconclusiveDimensionOperation.*unknown dimensions"
            r".*drop_remainder=True.*run_eagerly=True",
        ):
            fit(run_eagerly=False)
        layer = fit(run_eagerly=True)
    else:
        layer = fit(run_eagerly=False)
    expected = _batch_stats_reference(model, state, x, 4)
    assert jax.tree.leaves(expected) and not any(
        np.allclose(a, b) for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state))
    )
    # The partial batch counted: without it the statistics differ.
    assert not np.allclose(
        jax.tree.leaves(expected)[0], jax.tree.leaves(_batch_stats_reference(model, state, x[:8], 4))[0]
    )
    tree_allclose(layer.get_eqx_state(), expected, rtol=1e-5, atol=1e-6)


def test_batchnorm_model_needs_a_concrete_batch_so_save_fails_clearly(tmp_path):
    """eqx.nn.BatchNorm's `pmean` over the vmapped batch needs a concrete batch
    size (a jax limitation under shape polymorphism), so this model cannot be
    exported with a symbolic batch; the error says so and names the fixes."""

    def build(seed, **kwargs):
        model, state = _net(seed=seed)
        return keras.Sequential([keras.Input((8,)), EquinoxLayer(model, state, **kwargs)])

    model = build(0)
    with pytest.raises(ValueError, match=r"(?s)symbolic batch size.*register_keras_serializable.*save_weights"):
        model.save(tmp_path / "portable.keras")
    with pytest.raises(ValueError, match=r"is not registered.*register_keras_serializable"):
        build(0, save_as="source").save(tmp_path / "eqx.keras")
    model.save_weights(tmp_path / "eqx.weights.h5")
    fresh = build(1)
    assert not np.allclose(to_numpy(fresh(X)), to_numpy(model(X)))
    fresh.load_weights(tmp_path / "eqx.weights.h5")
    np.testing.assert_array_equal(to_numpy(fresh(X)), to_numpy(model(X)))


def test_wrong_objects_name_the_right_adapter():
    from flax import nnx

    with pytest.raises(TypeError, match="NnxLayer"):
        EquinoxLayer(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    model, state = _net()
    with pytest.raises(TypeError, match="make_with_state"):
        EquinoxLayer(model, state={"not": "a State"})


def test_missing_equinox_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "equinox", None)
    with pytest.raises(ImportError, match=r'pip install "jaxlayer\[equinox\]"'):
        EquinoxLayer(object())
