"""Mixed precision: dtype policies, what `call_fn` receives, what is stored.

Float parameters follow the layer's dtype policy (stored in the variable dtype,
handed to `call_fn` in the compute dtype), float inputs are cast as Keras
layers cast them, while state keeps its own dtype (like BatchNormalization's
float32 statistics) and integer/bool leaves never change dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer

pytestmark = pytest.mark.nnx_mode  # also run with KERAS_NNX_ENABLED=true

MIXED = ["mixed_float16", "mixed_bfloat16"]
ALL_POLICIES = ["float32", "mixed_float16", "mixed_bfloat16", "float16", "bfloat16"]


@pytest.fixture
def global_policy():
    """Sets the global dtype policy for one test and restores float32 after."""
    previous = keras.config.dtype_policy()

    def set_policy(name):
        keras.config.set_dtype_policy(name)

    yield set_policy
    keras.config.set_dtype_policy(previous)


def dtype_name(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def make_layer(seen: dict, **kwargs) -> JaxLayer:
    """A small stateful model with float, int and bool leaves in params and state.

    `call_fn` records the dtypes it receives (at trace time) in `seen`. In
    training it moves the running mean by 1e-3 (1.0 -> 1.001, which bfloat16
    and float16 cannot represent) and counts steps.
    """

    def call_fn(params, state, inputs, training):
        seen["params"] = jax.tree.map(lambda x: x.dtype.name, params)
        seen["state"] = jax.tree.map(lambda x: x.dtype.name, state)
        seen["inputs"] = jax.tree.map(lambda x: x.dtype.name, inputs)
        x = inputs["x"]
        scale = jnp.where(params["mask"], params["w"], jnp.zeros_like(params["w"]))
        # Computation in the compute dtype: state is cast to it for use only.
        y = (x * scale + params["b"]) * state["mean"].astype(x.dtype)
        y = y + inputs["ids"].astype(x.dtype)[:, None] * jnp.zeros((), x.dtype)
        new_state = dict(state)
        if training:
            new_state["mean"] = state["mean"] + jnp.asarray(1e-3, state["mean"].dtype)
            new_state["count"] = state["count"] + 1
        return y, new_state

    params = {
        "w": np.array([1.0, 2.0, 3.0], "float32"),
        "b": np.array([0.5, -0.5, 0.25], "float32"),
        "step": np.int32(7),
        "mask": np.array([True, True, False]),
    }
    state = {
        "mean": np.ones(3, "float32"),
        "count": np.int32(0),
        "flags": np.array([True, False, True]),
    }
    return JaxLayer(call_fn, params=params, state=state, **kwargs)


def batch():
    return {
        "x": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "float32"),
        "ids": np.array([3, 4], "int32"),
    }


def expected_outputs():
    x = batch()["x"]
    return (x * np.array([1.0, 2.0, 0.0]) + np.array([0.5, -0.5, 0.25])) * 1.0


def stored_dtypes(layer) -> dict:
    return {v.name: keras.backend.standardize_dtype(v.dtype) for v in layer.weights}


@pytest.mark.parametrize("via", ["dtype_argument", "global_policy"])
@pytest.mark.parametrize("policy", MIXED)
def test_mixed_policy_stores_float32_and_hands_over_compute_dtype(policy, via, global_policy):
    compute = policy.split("_")[1]
    seen = {}
    if via == "global_policy":
        global_policy(policy)
        layer = make_layer(seen)
    else:
        layer = make_layer(seen, dtype=policy)
    assert layer.dtype_policy.name == policy
    outputs = layer(batch())

    assert stored_dtypes(layer) == {
        "w": "float32",
        "b": "float32",
        "step": "int32",
        "mask": "bool",
        "mean": "float32",
        "count": "int32",
        "flags": "bool",
    }
    assert seen["params"] == {"w": compute, "b": compute, "step": "int32", "mask": "bool"}
    assert seen["state"] == {"mean": "float32", "count": "int32", "flags": "bool"}
    # Float inputs are cast to the compute dtype, integer inputs are not.
    assert seen["inputs"] == {"x": compute, "ids": "int32"}
    assert dtype_name(outputs) == compute
    np.testing.assert_allclose(
        to_numpy(outputs).astype("float32"), expected_outputs(), rtol=1e-2, atol=1e-2
    )
    # The trainable/non-trainable split follows the dtypes, not the policy.
    assert sorted(v.name for v in layer.trainable_weights) == ["b", "w"]


@pytest.mark.parametrize("policy", MIXED)
def test_symbolic_outputs_are_in_the_compute_dtype(policy):
    compute = policy.split("_")[1]
    layer = make_layer({}, dtype=policy)
    inputs = {"x": keras.Input((3,), dtype="float32"), "ids": keras.Input((), dtype="int32")}
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, 3)
    assert dtype_name(outputs) == compute


@pytest.mark.parametrize("policy", MIXED)
def test_init_fn_sees_inputs_in_the_compute_dtype_and_params_are_stored_float32(policy):
    compute = policy.split("_")[1]
    seen = {}

    def init_fn(inputs):
        seen["init"] = (inputs.dtype.name, inputs.shape)
        return {"kernel": jnp.ones((inputs.shape[-1], 2), inputs.dtype)}

    def call_fn(params, inputs):
        seen["call"] = params["kernel"].dtype.name
        return inputs @ params["kernel"]

    layer = JaxLayer(call_fn, init_fn, dtype=policy)
    outputs = layer(np.ones((2, 3), "float32"))
    assert seen == {"init": (compute, (2, 3)), "call": compute}
    # init_fn built a half-precision array; the variable follows the policy.
    assert stored_dtypes(layer) == {"kernel": "float32"}
    assert dtype_name(layer.get_params()["kernel"]) == "float32"
    assert dtype_name(outputs) == compute
    np.testing.assert_allclose(to_numpy(outputs).astype("float32"), np.full((2, 2), 3.0))


@pytest.mark.needs_training  # training=True calls; the numpy backend refuses them
@pytest.mark.parametrize("policy", MIXED)
def test_state_keeps_float32_when_written_back(policy):
    layer = make_layer({}, dtype=policy)
    for _ in range(2):
        layer(batch(), training=True)
    state = layer.get_state()
    assert {k: dtype_name(v) for k, v in state.items()} == {
        "mean": "float32",
        "count": "int32",
        "flags": "bool",
    }
    # 1.002 needs float32: bfloat16/float16 would have rounded it to 1.0.
    expected = (np.float32(1.0) + np.float32(1e-3)) + np.float32(1e-3)
    np.testing.assert_array_equal(to_numpy(state["mean"]), np.full(3, expected))
    assert to_numpy(state["count"]) == 2
    np.testing.assert_array_equal(to_numpy(state["flags"]), [True, False, True])


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_integer_and_bool_leaves_never_change_dtype(policy):
    seen = {}
    layer = make_layer(seen, dtype=policy)
    layer(batch())
    variable_dtype = keras.dtype_policies.get(policy).variable_dtype
    compute = keras.dtype_policies.get(policy).compute_dtype
    stored = stored_dtypes(layer)
    assert {k: stored[k] for k in ("step", "mask", "count", "flags")} == {
        "step": "int32",
        "mask": "bool",
        "count": "int32",
        "flags": "bool",
    }
    assert stored["w"] == stored["b"] == variable_dtype
    assert stored["mean"] == "float32"  # state: its own dtype under every policy
    assert seen["params"] == {"w": compute, "b": compute, "step": "int32", "mask": "bool"}
    assert seen["state"] == {"mean": "float32", "count": "int32", "flags": "bool"}
    params = layer.get_params()
    assert dtype_name(params["step"]) == "int32" and int(to_numpy(params["step"])) == 7
    assert dtype_name(params["mask"]) == "bool"


@pytest.mark.skipif(
    BACKEND != "jax",
    reason="keras.layers.JaxLayer runs on the JAX and TensorFlow backends only; the "
    "comparison is made once, on JAX",
)
@pytest.mark.skipif(
    keras.config.is_nnx_enabled(),
    reason="keras.layers.JaxLayer itself fails in NNX mode (its `jax.tree` over NNX "
    "variables hands arrays to code expecting variables: AttributeError `.value`)",
)
def test_keras_jax_layer_downcasts_state_where_ours_does_not():
    # A BatchNorm-style running mean starting at 1.0 and moved by 1e-3 per
    # training call. keras.layers.JaxLayer makes state variables with the
    # layer's (float32) variable dtype and autocasts them, so `call_fn` gets
    # bfloat16 statistics and the update is lost to rounding.
    def init_fn(rng, inputs, training):
        return {"w": jnp.ones(inputs.shape[-1])}, {"mean": jnp.ones(inputs.shape[-1])}

    def call_fn(params, state, rng, inputs, training):
        seen.append(state["mean"].dtype.name)
        outputs = inputs * params["w"] - state["mean"].astype(inputs.dtype)
        new_mean = state["mean"] + jnp.asarray(1e-3, state["mean"].dtype)
        return outputs, {"mean": new_mean}

    x = np.ones((2, 3), "float32")
    seen = []
    theirs = keras.layers.JaxLayer(call_fn, init_fn, dtype="mixed_bfloat16")
    theirs(x, training=True)
    their_seen, seen = seen, []
    ours = JaxLayer(call_fn, init_fn, dtype="mixed_bfloat16")
    ours(x, training=True)

    assert their_seen == ["bfloat16"]
    assert seen == ["float32"]
    their_mean = to_numpy(theirs.non_trainable_weights[0].value)
    our_mean = to_numpy(ours.get_state()["mean"])
    np.testing.assert_array_equal(their_mean, np.ones(3, "float32"))  # update rounded away
    np.testing.assert_array_equal(our_mean, np.full(3, np.float32(1.0) + np.float32(1e-3)))


# ------------------------------------------------------------------ training

TRAIN_X = np.random.RandomState(0).randn(32, 4).astype("float32")
TRAIN_Y = np.stack([np.sin(TRAIN_X[:, 0]), TRAIN_X[:, 1] * TRAIN_X[:, 2]], axis=1).astype("float32")


def mlp_params():
    rs = np.random.RandomState(1)
    return {
        "dense": {
            "kernel": (rs.randn(4, 8) * 0.5).astype("float32"),
            "bias": np.zeros(8, "float32"),
        },
        "out": {"kernel": (rs.randn(8, 2) * 0.5).astype("float32"), "bias": np.zeros(2, "float32")},
    }


def mlp_call(params, inputs):
    hidden = jnp.tanh(inputs @ params["dense"]["kernel"] + params["dense"]["bias"])
    return hidden @ params["out"]["kernel"] + params["out"]["bias"]


def fit_mlp(policy, optimizer, loss="mse", epochs=3, **compile_kwargs):
    keras.backend.clear_session()
    layer = JaxLayer(mlp_call, params=mlp_params(), dtype=policy)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(optimizer=optimizer, loss=loss, **compile_kwargs)
    history = model.fit(TRAIN_X, TRAIN_Y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return layer, model, history.history["loss"]


def params_as_numpy(layer):
    return jax.tree.map(lambda x: to_numpy(x).astype("float32"), layer.get_params())


def max_difference(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


@pytest.mark.needs_training
def test_mixed_float16_training_with_loss_scaling_matches_float32():
    ref_layer, _, ref_losses = fit_mlp("float32", keras.optimizers.SGD(0.1))
    layer, model, losses = fit_mlp(
        "mixed_float16", keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    )
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert stored_dtypes(layer) == dict.fromkeys(
        ["dense.bias", "dense.kernel", "out.bias", "out.kernel"], "float32"
    )
    trained = params_as_numpy(layer)
    reference = params_as_numpy(ref_layer)
    assert max_difference(reference, jax.tree.map(np.asarray, mlp_params())) > 1e-2
    assert max_difference(trained, reference) < 5e-3
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-2)


def tiny_loss(y_true, y_pred):
    # Gradients w.r.t. the outputs below 1e-8: under half of float16's
    # smallest subnormal (6e-8), so they vanish in float16 unless the loss is
    # scaled (LossScaleOptimizer starts at 2**15).
    y_pred = keras.ops.cast(y_pred, "float32")
    return 1e-8 * keras.ops.mean(keras.ops.square(y_pred - y_true))


@pytest.mark.needs_training
def test_loss_scaling_reaches_the_wrapped_models_gradients():
    initial = jax.tree.map(np.asarray, mlp_params())

    def run(policy, optimizer, **compile_kwargs):
        layer, _, _ = fit_mlp(policy, optimizer, loss=tiny_loss, epochs=1, **compile_kwargs)
        return params_as_numpy(layer)

    # A large learning rate makes the tiny gradients visible in the weights.
    reference = run("float32", keras.optimizers.SGD(1e5))
    unscaled = run("mixed_float16", keras.optimizers.SGD(1e5), auto_scale_loss=False)
    scaled = run("mixed_float16", keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1e5)))
    assert max_difference(reference, initial) > 1e-4
    # Without loss scaling the float16 gradients underflow to zero: no update.
    assert max_difference(unscaled, initial) == 0.0
    # With it, the scaled cotangents survive through call_fn's float16
    # backward pass, and the unscaled update matches float32 training.
    assert max_difference(scaled, initial) > 1e-4
    assert max_difference(scaled, reference) < 0.05 * max_difference(reference, initial)
