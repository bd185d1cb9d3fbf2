"""The layer's life cycle, run in both variable modes of Keras on JAX.

Every test here is marked `nnx_mode`: `make test` runs them in the ordinary
per-backend processes and once more with KERAS_NNX_ENABLED=true (set before
Keras is imported), where Keras variables are `flax.nnx.Variable`s and layers
are `nnx.Module`s. They must pass in both: build, `fit`, state updates,
`get_params`, save/load. The last tests check NNX's own transforms on a model
holding the layer and run only in NNX mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import to_numpy
from jaxlayer import JaxLayer

pytestmark = pytest.mark.nnx_mode

NNX = keras.config.is_nnx_enabled()
X = np.linspace(-1.0, 1.0, 32, dtype="float32").reshape(8, 4)
Y = np.stack([np.sin(3 * X[:, 0]), X[:, 1] - X[:, 2]], axis=1).astype("float32")


@keras.saving.register_keras_serializable(package="test_nnx_mode")
def nnx_init(rng, inputs):
    k1, k2 = jax.random.split(rng)
    params = {
        "dense": {
            "kernel": jax.random.normal(k1, (inputs.shape[-1], 8)) * 0.5,
            "bias": jnp.zeros(8),
        },
        "out": {"kernel": jax.random.normal(k2, (8, 2)) * 0.5, "bias": jnp.zeros(2)},
    }
    state = {"mean": jnp.zeros(inputs.shape[-1]), "steps": jnp.zeros((), jnp.int32)}
    return params, state


def forward(params, inputs):
    hidden = jnp.tanh(inputs @ params["dense"]["kernel"] + params["dense"]["bias"])
    return hidden @ params["out"]["kernel"] + params["out"]["bias"]


@keras.saving.register_keras_serializable(package="test_nnx_mode")
def nnx_call(params, state, rng, inputs, training):
    """A running mean of the inputs and a step counter, updated in training;
    dropout-like noise drawn from `rng` (so the rng path runs too)."""
    if training:
        state = {
            "mean": 0.9 * state["mean"] + 0.1 * inputs.mean(axis=0),
            "steps": state["steps"] + 1,
        }
        keep = jax.random.bernoulli(rng, 0.9, inputs.shape)
        inputs = jnp.where(keep, inputs / 0.9, 0.0)
    return forward(params, inputs - state["mean"]), state


def make_model(seed=3):
    layer = JaxLayer(nnx_call, nnx_init, seed=seed, name="wrapped")
    model = keras.Sequential([keras.Input((4,)), layer])
    return layer, model


def test_mode_is_what_the_environment_asked_for():
    import os

    wanted = os.environ.get("KERAS_NNX_ENABLED", "false").lower() in ("true", "1")
    assert NNX == wanted
    layer, _ = make_model()
    if NNX:
        from flax import nnx

        assert isinstance(layer, nnx.Module)
        assert all(isinstance(v, nnx.Variable) for v in layer.weights)


def test_build_creates_named_variables_with_init_fn_values():
    keras.utils.set_random_seed(0)
    layer, model = make_model()
    assert layer.built
    assert sorted(v.name for v in layer.trainable_weights) == [
        "dense.bias",
        "dense.kernel",
        "out.bias",
        "out.kernel",
    ]
    assert sorted(v.name for v in layer.non_trainable_weights) == ["mean", "steps"]
    params = layer.get_params()
    assert params["dense"]["kernel"].shape == (4, 8)
    assert float(np.abs(to_numpy(params["dense"]["kernel"])).sum()) > 0
    state = layer.get_state()
    assert int(to_numpy(state["steps"])) == 0
    outputs = model(X)  # inference: the pure function of the current values
    expected = forward(params, jnp.asarray(X))
    np.testing.assert_allclose(to_numpy(outputs), np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.needs_training  # training=True calls; the numpy backend refuses them
def test_eager_training_call_updates_state_and_inference_does_not():
    layer, _ = make_model()
    layer(X, training=False)
    assert int(to_numpy(layer.get_state()["steps"])) == 0
    layer(X, training=True)
    layer(X, training=True)
    state = layer.get_state()
    assert int(to_numpy(state["steps"])) == 2
    expected_mean = 0.1 * X.mean(axis=0) + 0.9 * 0.1 * X.mean(axis=0)
    np.testing.assert_allclose(to_numpy(state["mean"]), expected_mean, rtol=1e-5, atol=1e-7)


@pytest.mark.needs_training
def test_fit_trains_updates_state_and_keeps_returned_arrays_alive():
    keras.utils.set_random_seed(1)
    layer, model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    initial = layer.get_params()
    history = model.fit(X, Y, batch_size=4, epochs=5, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]
    trained = layer.get_params()
    change = jax.tree.map(
        lambda a, b: float(np.abs(to_numpy(a) - to_numpy(b)).max()), trained, initial
    )
    assert min(jax.tree.leaves(change)) > 1e-3  # every parameter moved
    state = layer.get_state()
    assert int(to_numpy(state["steps"])) == 10  # 5 epochs x 2 batches
    assert float(np.abs(to_numpy(state["mean"])).sum()) > 0
    # Arrays handed out before `fit` are copies: the trainer's buffer donation
    # must not have deleted them.
    assert float(np.abs(to_numpy(initial["out"]["kernel"])).sum()) > 0
    # Inference after fit is the pure function of the trained values.
    expected = forward(jax.tree.map(jnp.asarray, trained), jnp.asarray(X) - state["mean"])
    np.testing.assert_allclose(
        to_numpy(model.predict(X, verbose=0)), np.asarray(expected), rtol=1e-5, atol=1e-5
    )


@pytest.mark.needs_training
def test_initial_params_given_by_the_user_survive_fit():
    params = jax.tree.map(
        jnp.asarray, {"w": np.ones((4, 2), "float32"), "b": np.zeros(2, "float32")}
    )
    layer = JaxLayer(lambda params, inputs: inputs @ params["w"] + params["b"], params=params)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(X, Y, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(params["w"]), np.ones((4, 2), "float32"))
    assert not np.array_equal(to_numpy(layer.get_params()["w"]), np.ones((4, 2), "float32"))


def test_set_params_and_set_state_assign_the_variables():
    layer, model = make_model()
    new_params = jax.tree.map(lambda a: jnp.full(a.shape, 0.25, a.dtype), layer.get_params())
    layer.set_params(new_params)
    layer.set_state({"mean": jnp.full(4, 0.5), "steps": jnp.int32(5)})
    assert int(to_numpy(layer.get_state()["steps"])) == 5
    expected = forward(new_params, jnp.asarray(X) - 0.5)
    np.testing.assert_allclose(to_numpy(model(X)), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    layer, model = make_model()
    layer.set_state({"mean": jnp.full(4, 0.25), "steps": jnp.int32(3)})
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_layer = loaded.get_layer("wrapped")
    assert isinstance(loaded_layer, JaxLayer)
    assert sorted(v.name for v in loaded_layer.weights) == sorted(v.name for v in layer.weights)
    for mine, theirs in (
        (layer.get_params(), loaded_layer.get_params()),
        (layer.get_state(), loaded_layer.get_state()),
    ):
        jax.tree.map(
            lambda a, b: np.testing.assert_array_equal(to_numpy(a), to_numpy(b)), mine, theirs
        )
    assert int(to_numpy(loaded_layer.get_state()["steps"])) == 3
    np.testing.assert_allclose(to_numpy(loaded(X)), to_numpy(model(X)), rtol=1e-6, atol=1e-6)


def test_weights_file_round_trip(tmp_path):
    layer, model = make_model(seed=1)
    layer.set_state({"mean": jnp.full(4, -0.5), "steps": jnp.int32(1)})
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    other_layer, other = make_model(seed=2)
    before = to_numpy(other_layer.get_params()["dense"]["kernel"])
    assert not np.array_equal(before, to_numpy(layer.get_params()["dense"]["kernel"]))
    other.load_weights(path)
    np.testing.assert_array_equal(
        to_numpy(other_layer.get_params()["dense"]["kernel"]),
        to_numpy(layer.get_params()["dense"]["kernel"]),
    )
    assert int(to_numpy(other_layer.get_state()["steps"])) == 1
    np.testing.assert_allclose(to_numpy(other(X)), to_numpy(model(X)), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not NNX, reason="NNX transforms need KERAS_NNX_ENABLED=true (JAX backend)")
def test_nnx_jit_runs_the_model_draws_fresh_rng_and_writes_state_back():
    from flax import nnx

    layer, model = make_model(seed=3)
    params, state0 = layer.get_params(), layer.get_state()

    @nnx.jit
    def step(model, x):
        return model(x, training=True)

    outputs = [np.asarray(step(model, X)) for _ in range(2)]
    # The seed generator's variable left the trace as a concrete value,
    # advanced once per step, as in eager calls.
    np.testing.assert_array_equal(np.asarray(layer.seed_generator.state.value), [3, 2])
    state = layer.get_state()
    assert int(to_numpy(state["steps"])) == 2
    np.testing.assert_allclose(to_numpy(state["mean"]), 0.19 * X.mean(axis=0), rtol=1e-5, atol=1e-7)
    # Each step ran `call_fn` with the key [3, step]: fresh dropout masks.
    expected_state = state0
    for index, got in enumerate(outputs):
        key = jnp.asarray([3, index], jnp.uint32)
        expected, expected_state = nnx_call(params, expected_state, key, jnp.asarray(X), True)
        np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert not np.allclose(outputs[0], outputs[1])
    # Eager training calls continue from the same generator state.
    layer(X, training=True)
    np.testing.assert_array_equal(np.asarray(layer.seed_generator.state.value), [3, 3])


@pytest.mark.skipif(not NNX, reason="NNX transforms need KERAS_NNX_ENABLED=true (JAX backend)")
def test_nnx_grad_over_the_model_matches_jax_grad_of_the_pure_function():
    from flax import nnx

    layer, model = make_model()

    def loss(model):
        return jnp.mean(model(X) ** 2)

    def is_trainable(path, value):
        return isinstance(value, nnx.Variable) and getattr(value, "trainable", False)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, is_trainable))(model)
    got = {
        g.name: np.asarray(g.value)
        for g in jax.tree.leaves(grads, is_leaf=lambda v: isinstance(v, nnx.Variable))
    }
    params, state = layer.get_params(), layer.get_state()
    expected = jax.grad(lambda p: jnp.mean(forward(p, jnp.asarray(X) - state["mean"]) ** 2))(params)
    assert sorted(got) == ["dense.bias", "dense.kernel", "out.bias", "out.kernel"]
    for group in expected:
        for leaf in expected[group]:
            np.testing.assert_allclose(
                got[f"{group}.{leaf}"], np.asarray(expected[group][leaf]), rtol=1e-5, atol=1e-7
            )
