"""S5 state write-back, S6 rng keys, S7 training flag, and stateful-call errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer
from models import dense_init, dropout_call, mlp_apply, stateful_call, stateful_init

X = np.arange(8, dtype="float32").reshape(2, 4) / 8


def test_inference_leaves_the_state_unchanged():
    layer = JaxLayer(stateful_call, stateful_init)
    layer(X)
    layer(X)
    np.testing.assert_array_equal(layer.get_state()["mean"], np.zeros(4))
    assert int(layer.get_state()["steps"]) == 0


@pytest.mark.needs_training
def test_state_updates_in_training_only():
    layer = JaxLayer(stateful_call, stateful_init)
    layer(X)
    np.testing.assert_array_equal(layer.get_state()["mean"], np.zeros(4))
    layer(X, training=True)
    layer(X, training=True)
    state = layer.get_state()
    assert int(state["steps"]) == 2
    np.testing.assert_allclose(state["mean"], 0.19 * X.mean(0), rtol=1e-5)
    # inference uses (and does not change) the running mean
    out = layer(X)
    np.testing.assert_allclose(to_numpy(out), mlp_apply(layer.get_params(), X - state["mean"]), rtol=1e-5)
    assert int(layer.get_state()["steps"]) == 2


@pytest.mark.needs_training
def test_state_written_back_inside_fit():
    model = keras.Sequential([keras.Input((4,)), JaxLayer(stateful_call, stateful_init)])
    model.compile("sgd", "mse")
    model.fit(np.ones((32, 4), "float32"), np.zeros((32, 3), "float32"), batch_size=8, epochs=2, verbose=0)
    state = model.layers[0].get_state()
    assert int(state["steps"]) == 8
    np.testing.assert_allclose(state["mean"], np.full(4, 1 - 0.9**8), rtol=1e-5)


def test_rng_is_none_in_inference():
    seen = []

    def call_fn(params, rng, inputs, training):
        seen.append((rng is None, training))
        return mlp_apply(params, inputs)

    layer = JaxLayer(call_fn, dense_init, seed=1)
    layer(X)
    assert seen[-1] == (True, False)


@pytest.mark.needs_training
def test_fresh_rng_key_every_training_call_and_seed_reproduces():
    def run(seed):
        keras.utils.set_random_seed(0)
        layer = JaxLayer(dropout_call, dense_init, seed=seed)
        return [to_numpy(layer(X, training=True)) for _ in range(3)], to_numpy(layer(X))

    first, inference = run(seed=7)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    again, _ = run(seed=7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other, _ = run(seed=8)
    assert not np.array_equal(first[0], other[0])
    # inference is deterministic (no dropout)
    assert np.count_nonzero(inference) == inference.size


def test_rng_key_is_a_raw_uint32_key():
    seen = {}

    def call_fn(params, rng, inputs, training):
        seen["rng"] = None if rng is None else (rng.shape, rng.dtype)
        return inputs

    layer = JaxLayer(call_fn, params={"w": np.ones(1, "float32")}, seed=0)
    layer(X, training=BACKEND != "numpy")  # numpy: inference only, rng is None
    assert seen.get("rng") == (((2,), jnp.uint32) if BACKEND != "numpy" else None)


def test_stateful_call_must_return_pair():
    def call_fn(params, state, inputs):
        return inputs

    layer = JaxLayer(call_fn, params={"w": np.ones(1, "float32")}, state={"s": np.zeros(1, "float32")})
    with pytest.raises(ValueError, match=r"must return a tuple `\(outputs, new_state\)`; it returned a"):
        layer(X)


def test_new_state_structure_mismatch_names_leaf():
    def call_fn(params, state, inputs):
        return inputs, {"s": state["s"], "extra": jnp.zeros(1)}

    layer = JaxLayer(call_fn, params={"w": np.ones(1, "float32")}, state={"s": np.zeros(1, "float32")})
    with pytest.raises(ValueError, match=r"new state.*structure.*unexpected leaves \['extra'\]"):
        layer(X)


def test_new_state_shape_and_dtype_mismatch_names_leaf():
    def wrong_shape(params, state, inputs):
        return inputs, {"s": jnp.zeros(2)}

    def wrong_dtype(params, state, inputs):
        return inputs, {"s": jnp.zeros(1, jnp.int32)}

    state = {"s": np.zeros(1, "float32")}
    with pytest.raises(ValueError, match=r"`state\['s'\]` has shape \(2,\), expected \(1,\)"):
        JaxLayer(wrong_shape, params={"w": np.ones(1, "float32")}, state=state)(X)
    with pytest.raises(ValueError, match=r"`state\['s'\]` has dtype int32, expected float32"):
        JaxLayer(wrong_dtype, params={"w": np.ones(1, "float32")}, state=state)(X)


@pytest.mark.skipif(
    BACKEND not in ("jax", "tensorflow"),
    reason=f"keras.layers.JaxLayer runs only on the jax and tensorflow backends "
    f"(its constructor raises ValueError on {BACKEND})",
)
@pytest.mark.skipif(
    keras.config.is_nnx_enabled(),
    reason="keras.layers.JaxLayer itself fails in NNX mode (AttributeError `.value`)",
)
def test_drop_in_same_results_as_keras_jax_layer():
    pytest.importorskip("tensorflow", reason="keras.layers.JaxLayer's build imports tensorflow")
    import jaxlayer

    def run(cls):
        keras.utils.set_random_seed(0)
        layer = cls(dropout_call, dense_init, seed=3)
        outs = [to_numpy(layer(X, training=True)) for _ in range(3)] + [to_numpy(layer(X))]
        params = jax.tree.map(lambda v: np.asarray(v.value), layer.params)
        return outs, params

    theirs, their_params = run(keras.layers.JaxLayer)
    ours, our_params = run(jaxlayer.JaxLayer)
    # Both draw the init key from Keras's global seed generator.
    assert jax.tree.structure(their_params) == jax.tree.structure(our_params)
    jax.tree.map(np.testing.assert_array_equal, their_params, our_params)
    np.testing.assert_array_equal(theirs[0], ours[0])  # first training call: same mask
    np.testing.assert_array_equal(theirs[3], ours[3])  # inference
    if BACKEND == "jax":
        for a, b in zip(theirs[1:3], ours[1:3]):
            np.testing.assert_array_equal(a, b)
    else:
        # On tensorflow Keras's layer keeps only the seed word of the
        # generator's `[seed, counter]` state, so every training call gets the
        # same key (the README's "RNG on tensorflow" row); ours gets a fresh one.
        np.testing.assert_array_equal(theirs[1], theirs[0])
        np.testing.assert_array_equal(theirs[2], theirs[0])
        assert not np.array_equal(ours[1], ours[0])
        assert not np.array_equal(ours[2], ours[1])


@pytest.mark.skipif(BACKEND != "jax", reason="counts JAX traces of the eager path")
def test_eager_calls_compile_once_per_shape_and_flag():
    layer = JaxLayer(dropout_call, dense_init, seed=0)
    layer(X)
    program = layer._program
    count = program.trace_count
    for _ in range(3):
        layer(X)
    assert program.trace_count == count
    layer(X, training=True)
    layer(X, training=True)
    assert program.trace_count == count + 1
    layer(np.ones((5, 4), "float32"))
    assert program.trace_count == count + 2
