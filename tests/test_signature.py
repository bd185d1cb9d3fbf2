"""S2/S8 argument binding by exact name, and the B8 signature errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer
from models import dense_init, mlp_apply

X = np.ones((2, 4), "float32")


def test_arguments_bound_by_name_in_any_order():
    seen = {}

    def call_fn(training, inputs, params):
        seen["training"] = training
        return mlp_apply(params, inputs)

    def init_fn(inputs, rng):
        return dense_init(rng, inputs)

    layer = JaxLayer(call_fn, init_fn)
    out = layer(X)
    np.testing.assert_allclose(to_numpy(out), mlp_apply(layer.get_params(), X), rtol=1e-6)
    assert seen["training"] is False
    if BACKEND != "numpy":  # numpy runs inference only
        layer(X, training=True)
        assert seen["training"] is True


@pytest.mark.needs_training
def test_training_and_rng_passed_only_when_asked():
    calls = []

    def call_fn(params, inputs):
        calls.append("call")
        return mlp_apply(params, inputs)

    def init_fn(inputs):  # no rng, no training
        return {"dense": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)},
                "out": {"kernel": jnp.ones((8, 3)), "bias": jnp.zeros(3)}}

    layer = JaxLayer(call_fn, init_fn)
    layer(X, training=True)
    assert calls and layer.seed_generator is None


def test_init_fn_receives_training_true():
    seen = {}

    def init_fn(rng, inputs, training):
        seen["training"] = training
        return dense_init(rng, inputs)

    JaxLayer(lambda params, inputs: mlp_apply(params, inputs), init_fn)(X)
    assert seen["training"] is True


def test_positional_only_parameters_bind():
    def call_fn(params, inputs, /):
        return mlp_apply(params, inputs)

    layer = JaxLayer(call_fn, dense_init)
    assert to_numpy(layer(X)).shape == (2, 3)


@pytest.mark.parametrize("bad", [None, 3, "fn"])
def test_call_fn_not_callable(bad):
    with pytest.raises(TypeError, match=r"`call_fn` must be a callable.*Received: call_fn="):
        JaxLayer(bad, params={"w": np.ones(2)})


def test_init_fn_not_callable():
    with pytest.raises(TypeError, match=r"`init_fn` must be a callable.*Received: init_fn=1"):
        JaxLayer(mlp_apply, init_fn=1)


def test_unsupported_argument_names_it_and_lists_allowed():
    def call_fn(params, x):
        return x

    with pytest.raises(ValueError, match=r"unsupported argument `x`.*`params`, `state`, `rng`, `inputs`, `training`"):
        JaxLayer(call_fn, params={"w": np.ones(2)})


def test_unsupported_init_argument():
    def init_fn(rng, inputs, state):
        return {}

    with pytest.raises(ValueError, match=r"`init_fn`.*unsupported argument `state`.*`rng`, `inputs`, `training`"):
        JaxLayer(mlp_apply, init_fn)


def test_missing_inputs():
    with pytest.raises(ValueError, match=r"`call_fn`.*has no `inputs` argument"):
        JaxLayer(lambda params: params, params={"w": np.ones(2)})
    with pytest.raises(ValueError, match=r"`init_fn`.*has no `inputs` argument"):
        JaxLayer(mlp_apply, init_fn=lambda rng: {})


@pytest.mark.parametrize("signature", ["args", "kwargs"])
def test_star_arguments_rejected(signature):
    if signature == "args":
        def call_fn(params, *inputs):
            return inputs
        pattern = r"takes `\*inputs`"
    else:
        def call_fn(params, inputs, **options):
            return inputs
        pattern = r"takes `\*\*options`"
    with pytest.raises(ValueError, match=pattern + r".*named explicitly"):
        JaxLayer(call_fn, params={"w": np.ones(2)})


def test_params_without_init_fn_params_or_state():
    with pytest.raises(ValueError, match=r"takes `params`, but `init_fn`, `params` and `state` are all None"):
        JaxLayer(mlp_apply)
    with pytest.raises(ValueError, match=r"takes `state`, but `init_fn`, `params` and `state` are all None"):
        JaxLayer(lambda state, inputs: (inputs, state))


def test_params_given_but_not_taken():
    with pytest.raises(ValueError, match=r"`params` was given but `call_fn`.*has no `params` argument"):
        JaxLayer(lambda inputs: inputs, params={"w": np.ones(2)})


@pytest.mark.parametrize("seed", [1.5, "7", True, [1]])
def test_bad_seed(seed):
    with pytest.raises(TypeError, match=r"`seed` must be an int or None.*Received: seed="):
        JaxLayer(lambda params, rng, inputs: inputs, params={"w": np.ones(2)}, seed=seed)


def test_function_without_params_needs_no_init():
    layer = JaxLayer(lambda inputs: inputs * 2.0)
    assert layer.built and not layer.weights
    np.testing.assert_allclose(to_numpy(layer(X)), X * 2)
