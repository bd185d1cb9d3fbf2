"""The cross-backend contract (SPEC B2): one suite, run unchanged under every
Keras backend (one pytest process each), checked against pure-JAX references
computed in the test itself.

Gradients are taken with the active backend's own autodiff (`jax.grad` over
`stateless_call`, `tf.GradientTape`, `torch.autograd.grad`); the only
backend-specific code is `backend_gradients` below. Training tests carry
`needs_training` (skipped on numpy, see conftest).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy, tree_allclose
from jaxlayer import JaxLayer

RTOL, ATOL = 1e-5, 1e-6
LEARNING_RATE = 0.1
SEED = 7

# ---------------------------------------------------------------- models
# Module-level and registered, so that the save/load tests can use them.

register = keras.saving.register_keras_serializable(package="jaxlayer_contract")


@register
def mlp_init(rng, inputs):
    k1, k2 = jax.random.split(rng)
    features = inputs.shape[-1]
    return {
        "hidden": {"kernel": jax.random.normal(k1, (features, 6)) * 0.5, "bias": jnp.full(6, 0.1)},
        "out": {"kernel": jax.random.normal(k2, (6, 3)) * 0.5, "bias": jnp.full(3, -0.2)},
    }


def mlp_apply(params, inputs):
    hidden = jnp.tanh(inputs @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return hidden @ params["out"]["kernel"] + params["out"]["bias"]


@register
def mlp_call(params, inputs):
    return mlp_apply(params, inputs)


@register
def running_mean_init(rng, inputs):
    state = {"mean": jnp.zeros(inputs.shape[-1]), "count": jnp.zeros((), jnp.int32)}
    return mlp_init(rng, inputs), state


@register
def running_mean_call(params, state, inputs, training):
    """BatchNorm-style: the batch mean (and a running-mean update) in training."""
    if training:
        mean = inputs.mean(axis=0)
        state = {"mean": 0.9 * state["mean"] + 0.1 * mean, "count": state["count"] + 1}
    else:
        mean = state["mean"]
    return mlp_apply(params, inputs - mean), state


@register
def dropout_call(params, rng, inputs, training):
    outputs = mlp_apply(params, inputs)
    if not training:
        if rng is not None:
            raise ValueError(f"rng must be None in inference, got {rng!r}")
        return outputs
    keep = jax.random.bernoulli(rng, 0.5, outputs.shape)
    return jnp.where(keep, outputs * 2.0, 0.0)


@register
def tree_init(rng, inputs):
    k1, k2 = jax.random.split(rng)
    return {
        "a": jax.random.normal(k1, (inputs["a"].shape[-1], 3)),
        "b": [jax.random.normal(k2, (inputs["b"][0].shape[-1], 3)), jnp.ones(3)],
    }


@register
def tree_call(params, inputs):
    """Dict-and-tuple inputs, tuple-and-dict outputs."""
    first, second = inputs["b"]
    mixed = inputs["a"] @ params["a"] + (first * second) @ params["b"][0]
    return mixed * params["b"][1], {"total": jnp.sum(mixed, axis=-1), "a": jnp.sin(inputs["a"])}


@register
def plain_call(inputs):
    return jnp.sin(inputs) * 2.0 + inputs**2


def ref_loss(outputs):
    return sum(jnp.sum(0.5 * leaf * leaf + leaf) for leaf in jax.tree.leaves(outputs))


def backend_loss(outputs):
    ops = keras.ops
    return sum(ops.sum(0.5 * leaf * leaf + leaf) for leaf in jax.tree.leaves(outputs))


def haiku_mlp():
    hk = pytest.importorskip("haiku")

    def forward(inputs):
        return hk.nets.MLP([5, 2], activation=jnp.tanh)(inputs)

    return hk.transform(forward)


# ---------------------------------------------------------------- helpers


def data(*shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


def tree_data(batch=5):
    return {"a": data(batch, 4, seed=1), "b": (data(batch, 2, seed=2), data(batch, 2, seed=3))}


def raw_key(counter):
    """The key the layer must hand `call_fn` on its `counter`-th training call."""
    return jnp.array([SEED, counter], jnp.uint32)


def backend_gradients(layer, inputs, training=False):
    """Gradients of `backend_loss(layer(inputs))` with the backend's autodiff.

    Returns `({id(variable): grad}, input_grads)` as NumPy arrays.
    """
    variables = list(layer.trainable_variables)
    if BACKEND == "jax":
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(values, x):
            outputs, _ = layer.stateless_call(values, non_trainable, x, training=training)
            return backend_loss(outputs)

        inputs = jax.tree.map(jnp.asarray, inputs)
        param_grads, input_grads = jax.grad(loss, argnums=(0, 1))(
            [v.value for v in variables], inputs
        )
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        inputs = jax.tree.map(tf.constant, inputs)
        with tf.GradientTape() as tape:
            tape.watch(jax.tree.leaves(inputs))
            loss = backend_loss(layer(inputs, training=training))
        param_grads, input_grads = tape.gradient(loss, (variables, inputs))
    elif BACKEND == "torch":
        import torch

        inputs = jax.tree.map(lambda x: torch.tensor(x, requires_grad=True), inputs)
        leaves, treedef = jax.tree.flatten(inputs)
        loss = backend_loss(layer(inputs, training=training))
        grads = torch.autograd.grad(loss, [v.value for v in variables] + leaves)
        param_grads = grads[: len(variables)]
        input_grads = jax.tree.unflatten(treedef, grads[len(variables) :])
    else:  # pragma: no cover - needs_training skips numpy
        raise AssertionError(f"no autodiff on {BACKEND}")
    by_variable = {id(v): to_numpy(g) for v, g in zip(variables, param_grads)}
    return by_variable, jax.tree.map(to_numpy, input_grads)


def assert_gradients_match(layer, inputs, reference_fn, training=False):
    """`reference_fn(params, inputs)` is the pure-JAX model."""
    grads, input_grads = backend_gradients(layer, inputs, training)
    ref_params_grad, ref_input_grad = jax.grad(
        lambda p, x: ref_loss(reference_fn(p, x)), argnums=(0, 1)
    )(layer.get_params(), jax.tree.map(jnp.asarray, inputs))
    variables = jax.tree.leaves(layer.params)
    assert len(variables) == len(grads)
    for variable, expected in zip(variables, jax.tree.leaves(ref_params_grad)):
        np.testing.assert_allclose(grads[id(variable)], expected, rtol=RTOL, atol=ATOL)
    tree_allclose(input_grads, ref_input_grad, RTOL, ATOL)


def predict_same(model_a, model_b, inputs):
    tree_allclose(model_a.predict(inputs, verbose=0), model_b.predict(inputs, verbose=0), 0, 0)


# ---------------------------------------------------------------- outputs


def test_outputs_match_reference_for_every_batch_size():
    layer = JaxLayer(mlp_call, mlp_init)
    for batch in (5, 2, 9):
        x = data(batch, 4, seed=batch)
        tree_allclose(layer(x), mlp_apply(layer.get_params(), x), RTOL, ATOL)


def test_init_runs_at_build_with_the_input_shapes():
    calls = []

    def init_fn(rng, inputs):
        calls.append((inputs.shape, inputs.dtype))
        return mlp_init(rng, inputs)

    layer = JaxLayer(mlp_call, init_fn)
    assert not layer.built and not layer.weights
    x = data(3, 7)
    layer(x)
    layer(x)
    assert calls == [((3, 7), jnp.float32)]
    assert layer.built
    shapes = {v.name: tuple(v.shape) for v in layer.trainable_variables}
    assert shapes == {
        "hidden.kernel": (7, 6),
        "hidden.bias": (6,),
        "out.kernel": (6, 3),
        "out.bias": (3,),
    }
    assert jax.tree.map(lambda a: a.shape, layer.get_params())["hidden"]["kernel"] == (7, 6)


def test_pytree_inputs_and_outputs():
    layer = JaxLayer(tree_call, tree_init)
    inputs = tree_data()
    outputs = layer(inputs)
    assert isinstance(outputs, tuple) and isinstance(outputs[1], dict)
    tree_allclose(outputs, tree_call(layer.get_params(), inputs), RTOL, ATOL)


def test_plain_function_model_and_given_params():
    x = data(4, 3)
    plain = JaxLayer(plain_call)
    assert plain.built and not plain.weights
    tree_allclose(plain(x), plain_call(x), RTOL, ATOL)

    params = mlp_init(jax.random.key(0), jnp.ones((1, 3)))
    given = JaxLayer(mlp_call, params=params)
    tree_allclose(given(x), mlp_apply(params, x), RTOL, ATOL)


def test_haiku_model_outputs():
    transformed = haiku_mlp()
    layer = JaxLayer(transformed.apply, transformed.init)
    x = data(4, 3)
    out = layer(x)
    assert sorted(v.name for v in layer.trainable_variables) == [
        "mlp.linear_0.b",
        "mlp.linear_0.w",
        "mlp.linear_1.b",
        "mlp.linear_1.w",
    ]
    tree_allclose(out, transformed.apply(layer.get_params(), None, x), RTOL, ATOL)


def test_stateful_model_keeps_state_in_inference():
    layer = JaxLayer(running_mean_call, running_mean_init)
    x = data(6, 4)
    out = layer(x)
    state = layer.get_state()
    tree_allclose(state, {"mean": np.zeros(4), "count": np.int32(0)}, 0, 0)
    reference, _ = running_mean_call(layer.get_params(), state, x, False)
    tree_allclose(out, reference, RTOL, ATOL)
    assert layer.get_state()["count"].dtype == jnp.int32


def test_rng_is_none_in_inference():
    # `dropout_call` raises if it receives a key in inference.
    layer = JaxLayer(dropout_call, mlp_init, seed=SEED)
    x = data(5, 4)
    tree_allclose(layer(x), mlp_apply(layer.get_params(), x), RTOL, ATOL)
    tree_allclose(layer(x, training=False), layer(x), 0, 0)


# ---------------------------------------------------------------- training


@pytest.mark.needs_training
def test_gradients_wrt_params_and_inputs():
    layer = JaxLayer(mlp_call, mlp_init)
    x = data(5, 4)
    layer(x)
    assert_gradients_match(layer, x, mlp_apply)


@pytest.mark.needs_training
def test_gradients_through_pytree_inputs_and_outputs():
    layer = JaxLayer(tree_call, tree_init)
    inputs = tree_data()
    layer(inputs)
    assert_gradients_match(layer, inputs, tree_call)


@pytest.mark.needs_training
def test_gradients_of_plain_function_wrt_inputs():
    layer = JaxLayer(plain_call)
    x = data(3, 2)
    grads, input_grads = backend_gradients(layer, x)
    assert grads == {}
    expected = jax.grad(lambda v: ref_loss(plain_call(v)))(jnp.asarray(x))
    tree_allclose(input_grads, expected, RTOL, ATOL)


@pytest.mark.needs_training
def test_gradients_of_haiku_model():
    transformed = haiku_mlp()
    layer = JaxLayer(transformed.apply, transformed.init)
    x = data(4, 3)
    layer(x)
    assert_gradients_match(layer, x, lambda p, v: transformed.apply(p, None, v))


@pytest.mark.needs_training
def test_training_gradients_with_state_and_rng():
    x = data(6, 4)
    stateful = JaxLayer(running_mean_call, running_mean_init)
    stateful(x)
    initial_state = stateful.get_state()
    assert_gradients_match(
        stateful, x, lambda p, v: running_mean_call(p, initial_state, v, True)[0], training=True
    )
    dropout = JaxLayer(dropout_call, mlp_init, seed=SEED)
    dropout(x)
    # The first training call gets the key [SEED, 0].
    assert_gradients_match(
        dropout, x, lambda p, v: dropout_call(p, raw_key(0), v, True), training=True
    )


@pytest.mark.needs_training
def test_one_sgd_step_matches_reference():
    layer = JaxLayer(mlp_call, mlp_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    x, y = data(8, 4, seed=1), data(8, 3, seed=2)
    before = layer.get_params()
    model.train_on_batch(x, y)
    grads = jax.grad(lambda p: jnp.mean((mlp_apply(p, x) - y) ** 2))(before)
    expected = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, before, grads)
    tree_allclose(layer.get_params(), expected, RTOL, ATOL)


@pytest.mark.needs_training
def test_state_updates_only_in_training():
    layer = JaxLayer(running_mean_call, running_mean_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    x, y = data(8, 4, seed=3), data(8, 3, seed=4)
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    tree_allclose(layer.get_state(), {"mean": np.zeros(4), "count": np.int32(0)}, 0, 0)

    # Eager training call: the output uses the batch mean, the state moves.
    params = layer.get_params()
    out = layer(x, training=True)
    expected_out, expected_state = running_mean_call(
        params, {"mean": jnp.zeros(4), "count": jnp.int32(0)}, jnp.asarray(x), True
    )
    tree_allclose(out, expected_out, RTOL, ATOL)
    tree_allclose(layer.get_state(), expected_state, RTOL, ATOL)

    # Inside the compiled train step (a graph on tensorflow) as well.
    model.train_on_batch(x, y)
    _, expected_state = running_mean_call(params, expected_state, jnp.asarray(x), True)
    tree_allclose(layer.get_state(), expected_state, RTOL, ATOL)
    assert int(layer.get_state()["count"]) == 2


@pytest.mark.needs_training
def test_fresh_rng_key_on_every_training_call():
    layer = JaxLayer(dropout_call, mlp_init, seed=SEED)
    x = data(6, 4)
    layer(x)  # inference: draws no key
    params = layer.get_params()
    first, second = layer(x, training=True), layer(x, training=True)
    assert not np.allclose(to_numpy(first), to_numpy(second))
    # The key is the seed generator's full [seed, counter] state as uint32.
    tree_allclose(first, dropout_call(params, raw_key(0), x, True), RTOL, ATOL)
    tree_allclose(second, dropout_call(params, raw_key(1), x, True), RTOL, ATOL)


@pytest.mark.needs_training
def test_fit_trains_every_kind_of_variable():
    x, y = data(16, 4, seed=5), data(16, 3, seed=6)
    # A fixed initialisation and no shuffling: the run is the same every time.
    params, state = running_mean_init(jax.random.PRNGKey(0), jnp.asarray(x))
    layer = JaxLayer(running_mean_call, params=params, state=state)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    before = layer.get_params()
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False)
    assert int(layer.get_state()["count"]) == 8
    # Training-mode losses (batch statistics) of the first and last epochs;
    # an inference-mode `evaluate` uses the running mean and is not comparable.
    assert history.history["loss"][-1] < history.history["loss"][0]
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(layer.get_params())):
        assert not np.allclose(old, new)


# A raw PRNG key and a counter as uint32 state, high bits set (Keras-torch
# stores uint32 variables as int64: the bridge must round-trip them exactly).
UINT32_KEY = np.array([0xFFFFFFF0, 0x80000001], np.uint32)


@register
def uint32_state_init(rng, inputs):
    state = {"key": jnp.asarray(UINT32_KEY), "count": jnp.asarray(0xFFFFFFFE, jnp.uint32)}
    return mlp_init(rng, inputs), state


@register
def uint32_state_call(params, state, inputs, training):
    outputs = mlp_apply(params, inputs)
    if not training:
        return outputs, state
    key, noise_key = jax.random.split(state["key"])
    outputs = outputs + 0.1 * jax.random.normal(noise_key, outputs.shape)
    return outputs, {"key": key, "count": state["count"] + 1}


def test_uint32_state_keeps_its_dtype_and_bits_in_inference():
    layer = JaxLayer(uint32_state_call, uint32_state_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    x = data(5, 4)
    tree_allclose(model.predict(x, verbose=0), mlp_apply(layer.get_params(), x), RTOL, ATOL)
    state = layer.get_state()
    assert state["key"].dtype == jnp.uint32 and state["count"].dtype == jnp.uint32
    np.testing.assert_array_equal(state["key"], UINT32_KEY)
    assert int(state["count"]) == 0xFFFFFFFE


@pytest.mark.needs_training
def test_uint32_key_in_state_is_split_and_written_back_each_training_step():
    layer = JaxLayer(uint32_state_call, uint32_state_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    model.fit(data(4, 4), data(4, 3, seed=1), batch_size=2, epochs=1, verbose=0)  # 2 steps
    key = jnp.asarray(UINT32_KEY)
    for _ in range(2):
        key, _ = jax.random.split(key)
    state = layer.get_state()
    np.testing.assert_array_equal(state["key"], key)
    assert state["count"].dtype == jnp.uint32 and int(state["count"]) == 0  # wrapped around


# ---------------------------------------------------------------- saving


def test_save_and_load_round_trip(tmp_path):
    x = data(5, 4)
    layer = JaxLayer(running_mean_call, running_mean_init, seed=SEED, name="bn_mlp")
    model = keras.Sequential([keras.Input((4,)), layer])
    layer.set_state({"mean": jnp.arange(4.0) / 10, "count": jnp.int32(3)})
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    predict_same(model, loaded, x)
    restored = loaded.get_layer("bn_mlp")
    tree_allclose(restored.get_params(), layer.get_params(), 0, 0)
    tree_allclose(restored.get_state(), layer.get_state(), 0, 0)


def test_save_and_load_pytree_model(tmp_path):
    inputs = tree_data(3)
    layer = JaxLayer(tree_call, tree_init, name="tree")
    model_inputs = {
        "a": keras.Input((4,), name="a"),
        "b": (keras.Input((2,), name="b0"), keras.Input((2,), name="b1")),
    }
    model = keras.Model(model_inputs, layer(model_inputs))
    path = tmp_path / "tree.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    # A reloaded Functional model returns its output tuple as a list (Keras).
    outputs = jax.tree.leaves(loaded(inputs))
    tree_allclose(outputs, jax.tree.leaves(model(inputs)), 0, 0)
    tree_allclose(outputs, jax.tree.leaves(tree_call(layer.get_params(), inputs)), RTOL, ATOL)


# ---------------------------------------------------------------- numpy


@pytest.mark.skipif(BACKEND != "numpy", reason="only the numpy backend refuses training")
def test_training_on_numpy_gives_a_clear_error():
    layer = JaxLayer(mlp_call, mlp_init)
    x = data(2, 4)
    layer(x)
    with pytest.raises(ValueError, match=r"cannot train on the `numpy` Keras backend.*`jax`"):
        layer(x, training=True)
