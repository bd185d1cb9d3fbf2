"""S8/S9 initialisation at build time, symbolic shapes, and build failures (B8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer
from models import dense_init, mlp_apply, stateful_call, stateful_init


def test_init_fn_gets_placeholders_of_input_shapes_and_dtypes():
    seen = {}

    def init_fn(rng, inputs):
        seen["inputs"] = jax.tree.map(lambda x: (x.shape, x.dtype), inputs)
        return {"emb": jnp.ones((10, 4)), "scale": jnp.ones(4)}

    def call_fn(params, inputs):
        return params["emb"][inputs["ids"]] * params["scale"] + inputs["x"][..., None]

    layer = JaxLayer(call_fn, init_fn)
    out = layer({"ids": np.array([[1, 2, 3]], "int32"), "x": np.ones((1, 3), "float32")})
    assert to_numpy(out).shape == (1, 3, 4)
    assert seen["inputs"] == {"ids": ((1, 3), jnp.int32), "x": ((1, 3), jnp.float32)}


def test_unknown_dimensions_become_one_and_output_shape_is_symbolic():
    seen = {}

    def init_fn(rng, inputs):
        seen["shape"] = inputs.shape
        return {"emb": jnp.ones((10, 4))}

    model = keras.Sequential(
        [keras.Input((None,), dtype="int32"), JaxLayer(lambda params, inputs: params["emb"][inputs], init_fn)]
    )
    assert seen["shape"] == (1, 1)
    assert model.output_shape == (None, None, 4)
    assert to_numpy(model(np.array([[1, 2, 3, 4, 5]], "int32"))).shape == (1, 5, 4)


def test_symbolic_call_does_not_run_the_model_on_data():
    ran = []

    def call_fn(params, inputs):
        # Under eval_shape the inputs are tracers, never concrete data.
        ran.append(isinstance(inputs, jax.core.Tracer))
        return mlp_apply(params, inputs)

    inputs = keras.Input((4,))
    outputs = JaxLayer(call_fn, dense_init)(inputs)
    assert tuple(outputs.shape) == (None, 3)
    assert ran and all(ran)


def test_symbolic_shape_fallback_for_shape_dependent_python():
    def call_fn(params, inputs):
        if inputs.shape[0] > 1:  # not traceable with a symbolic batch
            return inputs @ params["w"]
        return inputs @ params["w"] * 2

    out = JaxLayer(call_fn, params={"w": np.ones((4, 2), "float32")})(keras.Input((4,)))
    assert tuple(out.shape) == (None, 2)


def test_pytree_outputs_in_functional_model():
    def call_fn(params, inputs):
        a, b = inputs
        return {"sum": a @ params["w"] + b, "first": a}

    x = keras.Input((4,))
    y = keras.Input((2,))
    out = JaxLayer(call_fn, params={"w": np.ones((4, 2), "float32")})((x, y))
    assert tuple(out["sum"].shape) == (None, 2) and tuple(out["first"].shape) == (None, 4)
    model = keras.Model([x, y], out)
    result = model.predict([np.ones((3, 4)), np.ones((3, 2))], verbose=0)
    np.testing.assert_allclose(result["sum"], np.full((3, 2), 5.0))


def test_params_given_means_no_init_call():
    def init_fn(rng, inputs):
        raise AssertionError("init_fn must not be called when params are given")

    params = {"dense": {"kernel": np.ones((4, 8), "float32"), "bias": np.zeros(8, "float32")},
              "out": {"kernel": np.ones((8, 3), "float32"), "bias": np.zeros(3, "float32")}}
    layer = JaxLayer(mlp_apply, init_fn, params=params)
    assert layer.built
    np.testing.assert_allclose(to_numpy(layer(np.ones((2, 4), "float32"))), mlp_apply(params, np.ones((2, 4))), rtol=1e-5)


def test_failed_build_leaves_layer_unbuilt_and_can_retry():
    attempts = []

    def init_fn(rng, inputs):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("transient failure")
        return dense_init(rng, inputs)

    layer = JaxLayer(mlp_apply, init_fn)
    with pytest.raises(RuntimeError, match="transient"):
        layer(np.ones((2, 4), "float32"))
    assert not layer.built and layer.weights == [] and layer.params is None
    assert to_numpy(layer(np.ones((2, 4), "float32"))).shape == (2, 3)
    assert layer.built and len(layer.trainable_weights) == 4


def test_failed_variable_creation_rolls_back(monkeypatch):
    layer = JaxLayer(mlp_apply, dense_init)
    original = layer.add_weight
    created = []

    def failing_add_weight(*args, **kwargs):
        if len(created) == 2:
            raise RuntimeError("out of memory")
        created.append(original(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(layer, "add_weight", failing_add_weight)
    with pytest.raises(RuntimeError, match="out of memory"):
        layer(np.ones((2, 4), "float32"))
    assert len(created) == 2 and not layer.built and layer.weights == []
    monkeypatch.setattr(layer, "add_weight", original)
    assert to_numpy(layer(np.ones((2, 4), "float32"))).shape == (2, 3)
    assert len(layer.weights) == 4


def test_string_leaves_stay_static_and_python_numbers_become_variables():
    def init_fn(rng, inputs):
        return {"a": jnp.ones(3), "b": np.array(["text"]), "mode": "relu", "n": 3, "scale": 0.5,
                "flag": True}

    seen = {}

    def call_fn(params, inputs):
        seen.update(mode=params["mode"], n=params["n"].dtype, scale=params["scale"].dtype)
        return inputs * params["a"] * params["scale"]

    layer = JaxLayer(call_fn, init_fn)
    out = layer(np.ones((1, 3), "float32"))
    np.testing.assert_allclose(to_numpy(out), np.full((1, 3), 0.5))
    # As in keras.layers.JaxLayer: Python numbers are scalar variables (the
    # float one trainable, following the dtype policy); strings stay static.
    names = {v.name: (v.trainable, v.dtype, tuple(v.shape)) for v in layer.weights}
    assert names == {"a": (True, "float32", (3,)), "scale": (True, "float32", ()),
                     "n": (False, "int32", ()), "flag": (False, "bool", ())}
    assert layer.params["b"][0] == "text" and seen == {"mode": "relu", "n": "int32", "scale": "float32"}
    params = layer.get_params()
    params["scale"] = 2.0  # a Python number is accepted where a scalar variable is
    layer.set_params(params)
    np.testing.assert_allclose(to_numpy(layer(np.ones((1, 3), "float32"))), np.full((1, 3), 2.0))


def test_init_fn_returns_params_alone_when_state_expected():
    with pytest.raises(ValueError, match=r"`init_fn`.*must return `\(params, state\)`.*takes a `state`"):
        JaxLayer(stateful_call, dense_init)(np.ones((2, 4), "float32"))


def test_init_fn_returns_pair_when_no_state():
    layer = JaxLayer(mlp_apply, stateful_init)
    with pytest.raises(ValueError, match=r"looks like `\(params, state\)`.*no `state` argument"):
        layer(np.ones((2, 4), "float32"))
    assert not layer.built and not layer.weights


def test_tuple_params_are_fine():
    def init_fn(rng, inputs):
        return (jnp.ones((inputs.shape[-1], 2)), jnp.zeros(2))

    layer = JaxLayer(lambda params, inputs: inputs @ params[0] + params[1], init_fn)
    np.testing.assert_allclose(to_numpy(layer(np.ones((1, 3), "float32"))), [[3.0, 3.0]])
    assert [v.name for v in layer.weights] == ["0", "1"]


@pytest.mark.skipif(BACKEND != "jax", reason="building inside a jax.jit trace only exists on the jax backend")
def test_build_inside_jit_is_a_clear_error():
    layer = JaxLayer(mlp_apply, dense_init)
    with pytest.raises(ValueError, match=r"cannot be built inside a `jax.jit`.*Build it first"):
        jax.jit(lambda x: layer(x))(jnp.ones((2, 4)))
    assert not layer.built
    assert to_numpy(layer(np.ones((2, 4), "float32"))).shape == (2, 3)


def test_explicit_build_uses_float_placeholders():
    layer = JaxLayer(mlp_apply, dense_init)
    layer.build((None, 4))
    assert layer.built and layer.params["dense"]["kernel"].shape == (4, 8)


def test_subclassed_model_builds_the_layer():
    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.body = JaxLayer(mlp_apply, dense_init)

        def call(self, x):
            return self.body(x) * 2.0

    model = Model()
    out = model(np.ones((2, 4), "float32"))
    np.testing.assert_allclose(to_numpy(out), 2 * mlp_apply(model.body.get_params(), np.ones((2, 4))), rtol=1e-5)
    assert len(model.trainable_weights) == 4
