"""One float rule (`jaxlayer._dtypes.is_float`) on every backend and in portable saves.

Real floating leaves (bfloat16 included) are trainable and differentiated;
complex leaves are state-like: non-trainable variables of their own dtype
that `fit` never changes and no gradient reaches.
"""

import os

import jax.numpy as jnp
import keras
import numpy as np
import pytest

from jaxlayer import JaxLayer, PortableLayer
from jaxlayer._dtypes import is_float

BACKEND = os.environ.get("KERAS_BACKEND", "jax")


def call_fn(params, inputs):
    scale = jnp.abs(params["c"]).sum()  # complex param, real result
    hidden = inputs @ params["w"] + params["b16"].astype(jnp.float32)
    return hidden * scale


def _params():
    return {
        "w": np.linspace(-1, 1, 6, dtype="float32").reshape(3, 2),
        "b16": jnp.asarray([0.5, -0.5], jnp.bfloat16),
        "c": np.asarray([1 + 1j, 0.5 - 0.25j], np.complex64),
    }


def _model():
    return keras.Sequential([keras.Input((3,)), JaxLayer(call_fn, params=_params(), name="mixed")])


def _values(layer):
    return {v.name: np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights}


def test_the_rule():
    for dtype in ("float32", "float16", "bfloat16", "float64", jnp.float8_e4m3fn):
        assert is_float(dtype), dtype
    for dtype in ("complex64", "complex128", "int32", "uint8", "bool"):
        assert not is_float(dtype), dtype


def test_bfloat16_trainable_complex_not():
    layer = _model().layers[0]
    trainable = {v.name for v in layer.trainable_variables}
    assert trainable == {"w", "b16"}
    (complex_variable,) = layer.non_trainable_variables
    assert complex_variable.name == "c"
    assert keras.backend.standardize_dtype(complex_variable.dtype) == "complex64"


def _fit_changes(model, layer):
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = np.zeros((16, 2), "float32")
    before = _values(layer)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    after = _values(layer)
    return {name: not np.array_equal(before[name], after[name]) for name in before}, before, after


@pytest.mark.needs_training
def test_fit_moves_float_and_bfloat16_and_never_complex():
    model = _model()
    changed, before, after = _fit_changes(model, model.layers[0])
    assert changed == {"w": True, "b16": True, "c": False}
    assert after["c"].dtype == np.complex64
    np.testing.assert_array_equal(before["c"], after["c"])


@pytest.mark.needs_training
def test_portable_save_keeps_the_rule(tmp_path):
    model = _model()
    x = np.ones((4, 3), "float32")
    expected = keras.ops.convert_to_numpy(model(x))
    path = tmp_path / "mixed.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.layers[0]
    assert isinstance(layer, PortableLayer)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, rtol=1e-6)
    assert {v.name for v in layer.trainable_variables} == {"w", "b16"}
    changed, _, _ = _fit_changes(loaded, layer)
    assert changed == {"w": True, "b16": True, "c": False}
