"""B3: `HaikuLayer` against Haiku's own `apply`."""

from __future__ import annotations

import sys

import jax
import keras
import numpy as np
import pytest

from adapter_core import check_build_call_fit, regression_data
from conftest import BACKEND, to_numpy, tree_allclose
from digits import fit_and_check_digits

hk = pytest.importorskip("haiku", reason="Haiku (dm-haiku) is not installed")

from jaxlayer import HaikuLayer, JaxLayer  # noqa: E402

X = np.linspace(-1, 1, 40, dtype="float32").reshape(5, 8)


@keras.saving.register_keras_serializable(package="jaxlayer_tests")
def haiku_mlp(features, is_training):
    x = jax.nn.relu(hk.Linear(32)(features))
    x = hk.BatchNorm(True, True, 0.9)(x, is_training)
    if is_training:
        x = hk.dropout(hk.next_rng_key(), 0.2, x)
    return hk.Linear(10)(x)


def plain_mlp(x):
    return hk.nets.MLP([16, 3])(x)




def test_outputs_match_haiku_apply_for_every_transform():
    rng = jax.random.key(0)
    for transformed, with_state in (
        (hk.transform(plain_mlp), False),
        (hk.without_apply_rng(hk.transform(plain_mlp)), False),
        (hk.transform_with_state(plain_mlp), True),
        (hk.without_apply_rng(hk.transform_with_state(plain_mlp)), True),
    ):
        layer = HaikuLayer(transformed)
        out = to_numpy(layer(X))
        assert isinstance(layer, JaxLayer)
        args = (layer.get_params(),) + ((layer.get_state(),) if with_state else ())
        if layer._apply_rng:
            args += (rng,)
        expected = transformed.apply(*args, X)
        expected = expected[0] if with_state else expected
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_transform_kind_is_detected():
    kinds = {
        "transform": HaikuLayer(hk.transform(plain_mlp)),
        "without_rng": HaikuLayer(hk.without_apply_rng(hk.transform(plain_mlp))),
        "with_state": HaikuLayer(hk.transform_with_state(plain_mlp)),
    }
    assert kinds["transform"]._apply_rng and not kinds["transform"]._with_state
    assert not kinds["without_rng"]._apply_rng
    assert kinds["with_state"]._with_state and kinds["with_state"]._apply_rng
    assert kinds["without_rng"].seed_generator is None  # no rng argument, no generator


def test_names_and_param_count_follow_haiku():
    transformed = hk.transform_with_state(haiku_mlp)
    layer = HaikuLayer(transformed)
    layer(X)
    params, state = transformed.init(jax.random.key(0), X, is_training=True)
    assert sorted(v.name for v in layer.trainable_weights) == [
        "batch_norm.offset",
        "batch_norm.scale",
        "linear.b",
        "linear.w",
        "linear_1.b",
        "linear_1.w",
    ]
    assert "batch_norm.mean_ema.average" in {v.name for v in layer.non_trainable_weights}
    assert sum(np.size(v) for v in layer.trainable_weights) == hk.data_structures.tree_size(params)
    assert sum(np.size(v) for v in layer.non_trainable_weights) == hk.data_structures.tree_size(
        state
    )
    assert layer.count_params() == hk.data_structures.tree_size((params, state))


@pytest.mark.needs_training
def test_training_flag_drives_dropout_and_batchnorm_state():
    layer = HaikuLayer(hk.transform_with_state(haiku_mlp), seed=1)
    layer(X)
    before = layer.get_state()
    np.testing.assert_array_equal(to_numpy(layer(X)), to_numpy(layer(X)))
    tree_allclose(layer.get_state(), before)
    a = to_numpy(layer(X, training=True))
    b = to_numpy(layer(X, training=True))
    assert not np.allclose(a, b)  # hk.next_rng_key gives fresh keys
    counter = to_numpy(layer.state["batch_norm/~/mean_ema"]["counter"])
    assert int(counter) == 2


@pytest.mark.needs_training
def test_same_seed_same_masks():
    transformed = hk.transform_with_state(haiku_mlp)
    params, state = transformed.init(jax.random.key(0), X, is_training=True)
    first = HaikuLayer(transformed, params=params, state=state, seed=4)
    second = HaikuLayer(transformed, params=params, state=state, seed=4)
    np.testing.assert_allclose(
        to_numpy(first(X, training=True)), to_numpy(second(X, training=True)), rtol=1e-6
    )


def test_flag_argument_by_keyword_and_first_argument_gets_inputs():
    def forward(batch, train=True, scale=2.0):
        return scale * hk.Linear(3)(batch) + (100.0 if train else 0.0)

    transformed = hk.without_apply_rng(hk.transform(forward))
    layer = HaikuLayer(transformed, training_argument="train")
    out = to_numpy(layer(X))  # inference passes train=False
    expected = transformed.apply(layer.get_params(), X, train=False)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert np.abs(out).max() < 50
    with pytest.raises(ValueError, match="training_argument='nope'"):
        HaikuLayer(transformed, training_argument="nope")

    def needs_more(x, mask):
        return hk.Linear(3)(x) * mask

    with pytest.raises(ValueError, match=r"required arguments \['mask'\]"):
        HaikuLayer(hk.transform(needs_more))


def test_params_go_back_into_haiku():
    transformed = hk.transform_with_state(haiku_mlp)
    layer = HaikuLayer(transformed)
    layer(X)
    layer.set_params(jax.tree.map(lambda p: p * 0.5, layer.get_params()))
    expected, _ = transformed.apply(layer.get_params(), layer.get_state(), None, X, False)
    np.testing.assert_allclose(to_numpy(layer(X)), expected, rtol=1e-5, atol=1e-6)


def test_plain_jaxlayer_with_haiku_functions_still_works():
    def model(inputs):  # exact-name binding: the argument must be `inputs`
        return plain_mlp(inputs)

    transformed = hk.transform(model)
    layer = JaxLayer(transformed.apply, transformed.init)
    assert tuple(layer(X).shape) == (5, 3)


@pytest.mark.nnx_mode
@pytest.mark.needs_training
def test_core_build_call_fit():
    transformed = hk.transform_with_state(haiku_mlp)
    x, y = regression_data(8, 10)

    def reference(layer):
        return transformed.apply(layer.get_params(), layer.get_state(), None, x, False)[0]

    check_build_call_fit(HaikuLayer(transformed, seed=0), x, y, reference)


@pytest.mark.needs_training
def test_fit_on_digits_reaches_90_percent():
    fit_and_check_digits(HaikuLayer(hk.transform_with_state(haiku_mlp)))


def test_model_save_and_load_round_trip_with_registered_function(tmp_path):
    transformed = hk.transform_with_state(haiku_mlp)
    model = keras.Sequential([keras.Input((8,)), HaikuLayer(transformed, seed=2)])
    if BACKEND != "numpy":
        model(X, training=True)
    expected = to_numpy(model(X))
    path = tmp_path / "haiku.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.layers[0]
    assert isinstance(layer, HaikuLayer) and layer._with_state and layer._apply_rng
    np.testing.assert_array_equal(to_numpy(loaded(X)), expected)
    assert [v.name for v in loaded.weights] == [v.name for v in model.weights]


def test_unregistered_function_saves_portably_or_fails_with_save_as_source(tmp_path):
    from jaxlayer import PortableLayer

    def build(**kwargs):
        return keras.Sequential([keras.Input((8,)), HaikuLayer(hk.transform(plain_mlp), **kwargs)])

    model = build()
    model.save(tmp_path / "portable.keras")
    loaded = keras.models.load_model(tmp_path / "portable.keras")
    assert isinstance(loaded.layers[0], PortableLayer)
    np.testing.assert_array_equal(to_numpy(loaded(X)), to_numpy(model(X)))
    with pytest.raises(ValueError, match=r"\('plain_mlp'\) is not registered.*register_keras_serializable"):
        build(save_as="source").save(tmp_path / "plain.keras")
    model.save_weights(tmp_path / "plain.weights.h5")
    fresh = build()
    fresh.load_weights(tmp_path / "plain.weights.h5")
    np.testing.assert_array_equal(to_numpy(fresh(X)), to_numpy(model(X)))


def test_wrong_object_names_the_right_adapter():
    with pytest.raises(TypeError, match=r"hk\.transform"):
        HaikuLayer(plain_mlp)
    eqx = pytest.importorskip("equinox")

    with pytest.raises(TypeError, match="EquinoxLayer"):
        HaikuLayer(eqx.nn.Linear(2, 2, key=jax.random.key(0)))


def test_missing_haiku_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "haiku", None)
    with pytest.raises(ImportError, match=r'pip install "jaxlayer\[haiku\]"'):
        HaikuLayer(object())
