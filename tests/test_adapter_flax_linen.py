"""B3: `FlaxLayer` (Flax Linen) against Flax's own `apply`."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import keras
import numpy as np
import pytest

from adapter_core import check_build_call_fit, regression_data
from conftest import BACKEND, to_numpy, tree_allclose
from digits import fit_and_check_digits

linen = pytest.importorskip("flax.linen", reason="Flax is not installed")

from jaxlayer import FlaxLayer, JaxLayer  # noqa: E402

X = np.linspace(-1, 1, 40, dtype="float32").reshape(5, 8)


@keras.saving.register_keras_serializable(package="jaxlayer_tests")
class LinenMLP(linen.Module):
    hidden: int = 32
    classes: int = 10

    @linen.compact
    def __call__(self, inputs, training=False):
        x = linen.relu(linen.Dense(self.hidden)(inputs))
        x = linen.BatchNorm(use_running_average=not training, momentum=0.9)(x)
        x = linen.Dropout(0.2, deterministic=not training)(x)
        return linen.Dense(self.classes)(x)

    def get_config(self):
        return {"hidden": self.hidden, "classes": self.classes}


class NoisyModule(linen.Module):
    """Asks for a stream keras.layers.FlaxLayer never supplies."""

    @linen.compact
    def __call__(self, inputs):
        noise = jax.random.normal(self.make_rng("noise"), inputs.shape)
        return linen.Dense(3)(inputs + noise)


class Embedder(linen.Module):
    @linen.compact
    def __call__(self, ids):
        return linen.Embed(20, 4)(ids).sum(axis=1)




class DropoutHead(linen.Module):
    """Dropout last, so a zero output is a dropped unit: the mask is visible."""

    @linen.compact
    def __call__(self, inputs, training=False):
        x = linen.BatchNorm(use_running_average=not training, momentum=0.9)(linen.Dense(16)(inputs))
        return linen.Dropout(0.5, deterministic=not training)(x)


@pytest.mark.skipif(
    BACKEND not in ("jax", "tensorflow"),
    reason=f"keras.layers.FlaxLayer runs only on the jax and tensorflow backends "
    f"(its constructor raises ValueError on {BACKEND})",
)
@pytest.mark.skipif(
    keras.config.is_nnx_enabled(),
    reason="keras.layers.FlaxLayer itself fails in NNX mode (AttributeError `.value`)",
)
def test_drop_in_same_params_outputs_and_masks_as_keras_flax_layer():
    pytest.importorskip("tensorflow", reason="keras.layers.FlaxLayer's build imports tensorflow")

    def run(cls):
        keras.utils.set_random_seed(0)
        layer = cls(DropoutHead(), seed=3)
        initial = jax.tree.map(lambda v: to_numpy(v.value), (layer.params, layer.state))
        training = [to_numpy(layer(X, training=True)) for _ in range(3)]
        state = jax.tree.map(lambda v: to_numpy(v.value), layer.state)
        return initial, training, to_numpy(layer(X)), state

    theirs, ours = run(keras.layers.FlaxLayer), run(FlaxLayer)
    # Both draw the init keys ("params", "dropout") from Keras's global seed
    # generator: the same variables, in the same tree, before any call.
    assert jax.tree.structure(theirs[0]) == jax.tree.structure(ours[0])
    jax.tree.map(np.testing.assert_array_equal, theirs[0], ours[0])
    their_masks = [t != 0 for t in theirs[1]]
    our_masks = [t != 0 for t in ours[1]]
    assert 0 < our_masks[0].mean() < 1
    np.testing.assert_array_equal(their_masks[0], our_masks[0])  # same seed, same mask
    # float32 rounding: the two layers compile the same math in different
    # programs (measured up to 1.4e-5 relative on this machine's CPU).
    np.testing.assert_allclose(theirs[1][0], ours[1][0], rtol=1e-4, atol=1e-5)
    if BACKEND == "jax":
        for a, b in zip(their_masks[1:], our_masks[1:]):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(our_masks[1], our_masks[0])
    else:
        # Keras's layer on tensorflow: the same key on every call (README,
        # "RNG on tensorflow"); ours: a fresh one.
        assert all(np.array_equal(m, their_masks[0]) for m in their_masks)
        assert not np.array_equal(our_masks[1], our_masks[0])
    # batch_stats moved the same way (before dropout: independent of the masks)
    tree_allclose(theirs[3], ours[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(theirs[2], ours[2], rtol=1e-5, atol=1e-6)  # inference


def test_outputs_and_state_match_flax_apply():
    module = LinenMLP()
    layer = FlaxLayer(module, seed=0)
    out = layer(X)
    variables = {**layer.get_params(), **layer.get_state()}
    np.testing.assert_allclose(to_numpy(out), module.apply(variables, X), rtol=1e-5, atol=1e-6)
    assert isinstance(layer, JaxLayer) and isinstance(layer, keras.layers.Layer)


def test_given_variables_are_used_and_names_follow_flax_paths():
    module = LinenMLP(hidden=16)
    variables = module.init(jax.random.key(1), X)
    layer = FlaxLayer(module, variables=variables)
    assert layer.built
    names = sorted(v.name for v in layer.trainable_variables)
    assert "params.Dense_0.kernel" in names and "params.BatchNorm_0.scale" in names
    assert sorted(v.name for v in layer.non_trainable_weights) == [
        "batch_stats.BatchNorm_0.mean",
        "batch_stats.BatchNorm_0.var",
    ]
    tree_allclose(layer.get_params(), {"params": variables["params"]})
    np.testing.assert_allclose(to_numpy(layer(X)), module.apply(variables, X), rtol=1e-5, atol=1e-6)


def test_count_params_equals_flax_count():
    module = LinenMLP()
    layer = FlaxLayer(module)
    layer(X)
    variables = module.init(jax.random.key(0), X)
    flax_params = sum(np.size(v) for v in jax.tree.leaves(variables["params"]))
    flax_state = sum(np.size(v) for v in jax.tree.leaves(variables["batch_stats"]))
    assert sum(np.size(v) for v in layer.trainable_variables) == flax_params
    assert layer.count_params() == flax_params + flax_state


@pytest.mark.needs_training
def test_training_updates_batch_stats_and_dropout_follows_the_flag():
    layer = FlaxLayer(LinenMLP(), seed=3)
    layer(X)
    before = layer.get_state()
    np.testing.assert_array_equal(to_numpy(layer(X)), to_numpy(layer(X)))
    tree_allclose(layer.get_state(), before)  # inference leaves the statistics alone
    a = to_numpy(layer(X, training=True))
    b = to_numpy(layer(X, training=True))
    assert not np.allclose(a, b)  # fresh dropout masks on every training call
    mean = to_numpy(layer.state["batch_stats"]["BatchNorm_0"]["mean"])
    assert not np.allclose(mean, to_numpy(before["batch_stats"]["BatchNorm_0"]["mean"]))


@pytest.mark.needs_training
def test_same_seed_gives_same_masks():
    module = LinenMLP()
    variables = module.init(jax.random.key(0), X)
    first = FlaxLayer(module, variables=variables, seed=7)
    second = FlaxLayer(module, variables=variables, seed=7)
    np.testing.assert_allclose(
        to_numpy(first(X, training=True)), to_numpy(second(X, training=True)), rtol=1e-6
    )


@pytest.mark.needs_training
def test_every_make_rng_stream_gets_a_key_in_training():
    layer = FlaxLayer(NoisyModule(), seed=0)
    layer(X, training=True)  # keras.layers.FlaxLayer fails: no "noise" stream
    a = to_numpy(layer(X, training=True))
    b = to_numpy(layer(X, training=True))
    assert not np.allclose(a, b)
    assert layer._streams[True] == ["noise"]


def test_inference_rng_streams_give_keys_in_inference():
    from flax.errors import InvalidRngError

    with pytest.raises(InvalidRngError, match='needs PRNG for "noise"'):
        FlaxLayer(NoisyModule(), seed=0)(X)  # no stream in inference by default
    layer = FlaxLayer(NoisyModule(), seed=0, inference_rng_streams=["noise"])
    a, b = to_numpy(layer(X)), to_numpy(layer(X))
    assert a.shape == (5, 3) and not np.allclose(a, b)


def test_integer_inputs_initialise_with_their_dtype():
    ids = np.array([[1, 2, 3], [4, 5, 19]], dtype="int32")
    module = Embedder()
    layer = FlaxLayer(module)
    out = layer(ids)
    expected = module.apply(layer.get_params(), ids)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-6)
    assert [v.name for v in layer.weights] == ["params.Embed_0.embedding"]


@pytest.mark.needs_training
def test_mixed_precision_keeps_batch_stats_in_float32():
    module = LinenMLP()
    layer = FlaxLayer(module, dtype="mixed_bfloat16", seed=0)
    layer(X)
    params, stats = layer.get_params(), layer.get_state()
    assert {v.dtype for v in layer.non_trainable_weights} == {"float32"}
    assert {v.dtype for v in layer.trainable_variables} == {"float32"}

    # Flax's own apply on what the layer hands it: bfloat16 params and inputs,
    # float32 batch statistics.
    def flax_apply(stats, training):
        variables = {
            "params": jax.tree.map(lambda p: p.astype("bfloat16"), params["params"]),
            **stats,
        }
        return module.apply(
            variables,
            X.astype("bfloat16"),
            training=training,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )

    layer(X, training=True)
    _, expected_stats = flax_apply(stats, training=True)
    new_stats = layer.get_state()
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(new_stats)} == {"float32"}
    tree_allclose(new_stats, expected_stats, rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        new_stats["batch_stats"]["BatchNorm_0"]["mean"], stats["batch_stats"]["BatchNorm_0"]["mean"]
    )

    out = layer(X)
    expected, _ = flax_apply(new_stats, training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert expected.dtype == "bfloat16"
    np.testing.assert_allclose(
        to_numpy(out).astype("float32"), np.asarray(expected, "float32"), rtol=1e-2, atol=1e-2
    )


def test_method_and_unbound_function_are_supported():
    class TwoHeads(linen.Module):
        def setup(self):
            self.dense = linen.Dense(2)

        def __call__(self, inputs):
            return self.dense(inputs)

        def doubled(self, inputs):
            return 2 * self.dense(inputs)

    module = TwoHeads()
    variables = module.init(jax.random.key(0), X)
    by_name = FlaxLayer(module, method="doubled", variables=variables)
    bound = FlaxLayer(module, method=module.doubled, variables=variables)
    unbound = FlaxLayer(module, method=lambda m, inputs: m.doubled(inputs), variables=variables)
    with pytest.raises(ValueError, match="no method `tripled`"):
        FlaxLayer(module, method="tripled")
    expected = module.apply(variables, X, method="doubled")
    for layer in (by_name, bound, unbound):
        np.testing.assert_allclose(to_numpy(layer(X)), expected, rtol=1e-5, atol=1e-6)


def test_params_go_back_into_flax():
    module = LinenMLP()
    layer = FlaxLayer(module, seed=0)
    layer(X)
    layer.set_params(jax.tree.map(lambda p: p * 0.5, layer.get_params()))
    variables = {"params": layer.get_params()["params"], **layer.get_state()}
    np.testing.assert_allclose(to_numpy(layer(X)), module.apply(variables, X), rtol=1e-5, atol=1e-6)


@pytest.mark.nnx_mode
@pytest.mark.needs_training
def test_core_build_call_fit():
    module = LinenMLP()
    x, y = regression_data(8, 10)

    def reference(layer):
        return module.apply({**layer.get_params(), **layer.get_state()}, x)

    check_build_call_fit(FlaxLayer(module, seed=0), x, y, reference)


@pytest.mark.needs_training
def test_fit_on_digits_reaches_90_percent():
    fit_and_check_digits(FlaxLayer(LinenMLP(), seed=0))


def test_model_save_and_load_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((8,)), FlaxLayer(LinenMLP(hidden=8), seed=0)])
    if BACKEND != "numpy":
        model(X, training=True)
    expected = to_numpy(model(X))
    path = tmp_path / "linen.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], FlaxLayer)
    assert loaded.layers[0].module == LinenMLP(hidden=8)
    np.testing.assert_array_equal(to_numpy(loaded(X)), expected)
    assert [v.name for v in loaded.weights] == [v.name for v in model.weights]


def test_unregistered_module_saves_portably_or_fails_with_save_as_source(tmp_path):
    from jaxlayer import PortableLayer

    model = keras.Sequential([keras.Input((8,)), FlaxLayer(linen.Dense(3), seed=0)])
    model.save(tmp_path / "portable.keras")
    loaded = keras.models.load_model(tmp_path / "portable.keras")
    assert isinstance(loaded.layers[0], PortableLayer)
    np.testing.assert_array_equal(to_numpy(loaded(X)), to_numpy(model(X)))
    strict = keras.Sequential([keras.Input((8,)), FlaxLayer(linen.Dense(3), save_as="source")])
    with pytest.raises(ValueError, match=r"model class `Dense` is not registered.*register_keras_serializable"):
        strict.save(tmp_path / "noisy.keras")
    weights = [to_numpy(v) for v in model.weights]
    model.save_weights(tmp_path / "noisy.weights.h5")
    fresh = keras.Sequential([keras.Input((8,)), FlaxLayer(linen.Dense(3), seed=5)])
    fresh.load_weights(tmp_path / "noisy.weights.h5")
    for a, b in zip(weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_wrong_object_names_the_right_adapter():
    from flax import nnx

    with pytest.raises(TypeError, match="NnxLayer"):
        FlaxLayer(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="flax.linen.Module"):
        FlaxLayer(lambda x: x)


def test_missing_flax_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flax", None)
    monkeypatch.setitem(sys.modules, "flax.linen", None)
    with pytest.raises(ImportError, match=r'pip install "jaxlayer\[flax\]"'):
        FlaxLayer(object())


@pytest.mark.slow
def test_importing_jaxlayer_imports_no_framework():
    script = (
        "import sys, jaxlayer, jaxlayer.adapters\n"
        "assert jaxlayer.adapters.__all__\n"
        "print(sorted(m for m in ('flax', 'haiku', 'equinox') if m in sys.modules))\n"
        "jaxlayer.FlaxLayer\n"
        "print('flax' in sys.modules)\n"
    )
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == "[]"
    assert lines[-1] == "False"  # even the class is loaded without importing flax


def test_method_bound_to_an_equal_module_is_saved_by_name(tmp_path):
    """Keras's layer saves `method=other.__call__` by name when `other == module`
    (Flax modules compare by their fields); so does ours, in the source form."""
    other = LinenMLP(hidden=8)
    layer = FlaxLayer(LinenMLP(hidden=8), method=other.__call__, save_as="source")
    model = keras.Sequential([keras.Input((8,)), layer])
    assert layer.get_config()["method"] == "__call__"
    expected = to_numpy(model(X))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[0], FlaxLayer) and loaded.layers[0].method == "__call__"
    np.testing.assert_array_equal(to_numpy(loaded(X)), expected)
    different = FlaxLayer(LinenMLP(hidden=8), method=LinenMLP(hidden=16).__call__, save_as="source")
    keras.Sequential([keras.Input((8,)), different])
    with pytest.raises(ValueError, match=r"`method`.*is not registered"):
        different.get_config()
