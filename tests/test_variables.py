"""S4/S5 and B4: PyTree leaves as Keras variables, readable names, get/set."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer
from models import dense_init, mlp_apply, stateful_call, stateful_init

X = np.ones((2, 4), "float32")


def test_names_follow_pytree_paths():
    layer = JaxLayer(stateful_call, stateful_init)
    layer(X)
    assert sorted(v.name for v in layer.trainable_variables) == [
        "dense.bias", "dense.kernel", "out.bias", "out.kernel"]
    assert sorted(v.name for v in layer.non_trainable_variables) == ["mean", "steps"]
    assert all(v.path.startswith(layer.name + "/") for v in layer.weights)


def test_haiku_style_names_are_legal_and_recognisable():
    params = {"mlp/~/linear_0": {"w": np.ones((4, 2), "float32"), "b": np.zeros(2, "float32")}}
    layer = JaxLayer(lambda params, inputs: inputs @ params["mlp/~/linear_0"]["w"], params=params)
    assert sorted(v.name for v in layer.weights) == ["mlp.linear_0.b", "mlp.linear_0.w"]


def test_names_unique_across_params_and_state_and_sequences():
    params = {"a": [np.ones(2, "float32"), np.ones(2, "float32")], "a.0": np.ones(2, "float32")}
    state = {"a": [np.ones(2, "float32"), np.ones(2, "float32")]}
    layer = JaxLayer(lambda params, state, inputs: (inputs, state), params=params, state=state)
    names = [v.name for v in layer.weights]
    assert len(set(names)) == len(names) == 5
    assert {"a.0", "a.1"} <= set(names)


def test_root_leaf_named_after_role():
    layer = JaxLayer(lambda params, inputs: inputs * params, params=np.float32(2.0))
    assert [v.name for v in layer.weights] == ["params"]
    np.testing.assert_allclose(to_numpy(layer(X)), X * 2)


def test_integer_param_leaves_are_not_trainable_and_keep_dtype():
    params = {"w": np.ones(3, "float32"), "table": np.arange(3, dtype="int32"), "mask": np.array([True, False, True])}
    layer = JaxLayer(lambda params, inputs: inputs * params["w"][params["table"]] * params["mask"], params=params)
    assert [v.name for v in layer.trainable_variables] == ["w"]
    dtypes = {v.name: keras.backend.standardize_dtype(v.dtype) for v in layer.weights}
    assert dtypes == {"w": "float32", "table": "int32", "mask": "bool"}


def test_float_policy_sets_param_dtype_but_not_integer_or_state():
    layer = JaxLayer(
        lambda params, state, inputs: (inputs * params["w"], state),
        params={"w": np.ones(3, "float32"), "n": np.int32(2)},
        state={"stat": np.zeros(3, "float32")},
        dtype="float16",
    )
    dtypes = {v.name: keras.backend.standardize_dtype(v.dtype) for v in layer.weights}
    assert dtypes == {"w": "float16", "n": "int32", "stat": "float32"}
    out = layer(np.ones((1, 3), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"


def test_params_and_state_trees_hold_variables():
    layer = JaxLayer(stateful_call, stateful_init)
    layer(X)
    assert isinstance(layer.params["dense"]["kernel"], keras.Variable)
    assert isinstance(layer.state["mean"], keras.Variable)
    assert layer.call_fn is stateful_call and layer.init_fn is stateful_init


def test_get_and_set_params_round_trip():
    layer = JaxLayer(mlp_apply, dense_init)
    layer(X)
    params = layer.get_params()
    assert isinstance(params["dense"]["kernel"], jax.Array)
    new = jax.tree.map(lambda p: p + 1.0, params)
    layer.set_params(new)
    np.testing.assert_allclose(to_numpy(layer(X)), mlp_apply(new, X), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), layer.get_params(), new)


def test_set_params_rejects_mismatch_and_changes_nothing():
    layer = JaxLayer(mlp_apply, dense_init)
    layer(X)
    before = layer.get_params()
    good = jax.tree.map(lambda p: p + 1.0, before)

    bad_shape = jax.tree.map(lambda p: p, good)
    bad_shape["out"]["kernel"] = jnp.ones((8, 4))
    with pytest.raises(ValueError, match=r"`params\['out'\]\['kernel'\]` has shape \(8, 4\), expected \(8, 3\).*Nothing was changed"):
        layer.set_params(bad_shape)

    bad_dtype = jax.tree.map(lambda p: p, good)
    bad_dtype["out"]["bias"] = jnp.ones(3, jnp.int32)
    with pytest.raises(ValueError, match=r"`params\['out'\]\['bias'\]` has dtype int32, expected float32"):
        layer.set_params(bad_dtype)

    missing = {"dense": good["dense"]}
    with pytest.raises(ValueError, match=r"structure.*missing leaves \['out'\]\['bias'\]"):
        layer.set_params(missing)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), layer.get_params(), before)


def test_set_state_checks_and_assigns():
    layer = JaxLayer(stateful_call, stateful_init)
    layer(X)
    with pytest.raises(ValueError, match=r"`state\['steps'\]` has dtype float32, expected int32"):
        layer.set_state({"mean": jnp.ones(4), "steps": jnp.float32(3)})
    np.testing.assert_array_equal(layer.get_state()["mean"], np.zeros(4))
    layer.set_state({"mean": jnp.ones(4), "steps": jnp.int32(3)})
    assert int(layer.get_state()["steps"]) == 3


def test_set_params_before_build():
    with pytest.raises(ValueError, match=r"before it was built"):
        JaxLayer(mlp_apply, dense_init).set_params({})


Point = collections.namedtuple("Point", ["x", "y"])

float_dtypes = st.sampled_from(["float32", "float16", "int32", "bool", "uint8"])


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    dtype = draw(float_dtypes)
    values = np.arange(int(np.prod(shape)), dtype="float64").reshape(shape) + draw(st.integers(0, 5))
    return values.astype(dtype)


leaves = st.one_of(arrays(), st.none(), st.sampled_from(["relu", 3, 0.5]))
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(["a", "b/c", "d", ""]), children, max_size=3),
        st.tuples(children, children).map(lambda t: Point(*t)),
    ),
    max_leaves=8,
)


@settings(max_examples=25 if BACKEND == "jax" else 10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees.map(lambda t: {"root": t}))
def test_random_pytrees_survive_variables_call_and_get_set(tree):
    seen = {}

    def is_array(x):
        return isinstance(x, (np.ndarray, np.generic, jax.Array))

    def call_fn(params, inputs):
        # Runs under jit: record the structure and static leaves (Python
        # values at trace time) and return the array leaves as outputs.
        seen["structure"] = jax.tree.structure(params)
        seen["static"] = [x for x in jax.tree.leaves(params) if not is_array(x)]
        return [x for x in jax.tree.leaves(params) if is_array(x)]

    layer = JaxLayer(call_fn, params=tree)
    outputs = layer(np.ones((1, 2), "float32"))
    # Python numbers become scalar variables (int32, float32), as in
    # keras.layers.JaxLayer; float16 leaves follow the layer's float32
    # policy; other dtypes are kept; None and strings stay static.
    def expected_leaf(x):
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            x = np.asarray(x, "int32" if isinstance(x, int) else "float32")
        return x.astype("float32") if is_array(x) and x.dtype.kind == "f" else x

    expected = jax.tree.map(expected_leaf, tree)
    expected_arrays = [x for x in jax.tree.leaves(expected) if is_array(x)]
    assert seen["structure"] == jax.tree.structure(expected)
    assert seen["static"] == [x for x in jax.tree.leaves(expected) if not is_array(x)]
    assert len(outputs) == len(expected_arrays)
    for got, want in zip(outputs, expected_arrays):
        got = to_numpy(got)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    # get_params / set_params round trip exactly.
    params = layer.get_params()
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    layer.set_params(jax.tree.map(lambda x: x + 1 if is_array(x) and x.dtype != bool else x, params))
    layer.set_params(params)
    for got, want in zip(jax.tree.leaves(layer.get_params()), jax.tree.leaves(expected)):
        if is_array(want):
            np.testing.assert_array_equal(np.asarray(got), want)
        else:
            assert got == want
