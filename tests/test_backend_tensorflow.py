"""TensorFlow-backend specifics: jax2tf conversion, graph mode, RNG, saving and export."""

from __future__ import annotations

import os

import pytest

from conftest import BACKEND

if BACKEND != "tensorflow":
    pytest.skip(
        "TensorFlow-bridge tests run only with KERAS_BACKEND=tensorflow",
        allow_module_level=True,
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from jaxlayer import JaxLayer  # noqa: E402

PACKAGE = "jaxlayer_tests_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
def linear_init(rng, inputs):
    k1, _ = jax.random.split(rng)
    return {"w": jax.random.normal(k1, (inputs.shape[-1], 3)) * 0.5, "b": jnp.full((3,), 0.1)}


@keras.saving.register_keras_serializable(package=PACKAGE)
def linear_call(params, inputs):
    return jnp.tanh(inputs @ params["w"] + params["b"])


@keras.saving.register_keras_serializable(package=PACKAGE)
def counting_init(rng, inputs):
    params = linear_init(rng, inputs)
    return params, {"mean": jnp.zeros(inputs.shape[-1]), "steps": jnp.zeros((), jnp.int32)}


@keras.saving.register_keras_serializable(package=PACKAGE)
def counting_call(params, state, inputs, training):
    if training:
        state = {
            "mean": 0.9 * state["mean"] + 0.1 * inputs.mean(axis=0),
            "steps": state["steps"] + 1,
        }
    return linear_call(params, inputs - state["mean"]), state


def key_call(rng, inputs, training):
    """Outputs the raw key it received (zeros in inference, where rng is None)."""
    batch = inputs.shape[0]
    if rng is None:
        return jnp.zeros((batch, 2), jnp.float32)
    return jnp.broadcast_to(rng.astype(jnp.float32), (batch, 2))


def _data(n, features=4, seed=0):
    rs = np.random.RandomState(seed)
    return rs.randn(n, features).astype("float32"), rs.randn(n, 3).astype("float32")


def test_fit_in_graph_mode_updates_params_and_state():
    x, y = _data(12)
    layer = JaxLayer(counting_call, counting_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(keras.optimizers.SGD(0.1), "mse", run_eagerly=False)
    before = jax.tree.map(np.asarray, layer.get_params())
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    state = layer.get_state()
    assert int(state["steps"]) == 3  # one update per batch, written back inside tf.function
    expected_mean = np.zeros(4, "float32")
    for i in range(3):
        expected_mean = 0.9 * expected_mean + 0.1 * x[4 * i : 4 * i + 4].mean(0)
    np.testing.assert_allclose(state["mean"], expected_mean, rtol=1e-5, atol=1e-6)
    after = layer.get_params()
    assert not np.allclose(before["w"], after["w"])
    model.predict(x, batch_size=5, verbose=0)  # inference leaves the state alone
    assert int(layer.get_state()["steps"]) == 3


def test_one_conversion_per_training_flag_serves_every_batch_size():
    layer = JaxLayer(linear_call, linear_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile("sgd", "mse")
    graph_call = tf.function(lambda x: layer(x, training=True))

    def use_all_paths(sizes):
        for n in sizes:
            layer(_data(n)[0])
            graph_call(_data(n)[0])
            model.fit(*_data(n + 3), batch_size=n, verbose=0)  # full and partial batches
            model.predict(_data(n + 1)[0], batch_size=n, verbose=0)

    use_all_paths([2])
    traces = layer._program.trace_count
    use_all_paths([3, 5])
    assert layer._program.trace_count == traces  # new batch sizes: no new JAX trace
    conversions = layer._bridge._conversions[layer._program]
    assert sorted(key[0] for key in conversions) == [False, True]


def test_model_branching_on_batch_size_falls_back_to_fixed_shapes():
    def call_fn(params, inputs):
        scale = 2.0 if inputs.shape[0] > 3 else 1.0  # needs a concrete batch size
        return linear_call(params, inputs) * scale

    layer = JaxLayer(call_fn, linear_init)
    small, large = _data(2)[0], _data(5)[0]
    out_small = layer(small)
    params = layer.get_params()
    np.testing.assert_allclose(out_small, linear_call(params, small), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer(large), 2 * linear_call(params, large), rtol=1e-5, atol=1e-6)


def test_fresh_rng_key_on_every_training_call_eager_and_graph():
    layer = JaxLayer(key_call, seed=7)
    x = np.zeros((2, 1), "float32")
    # Both words of Keras's TF seed ([seed, counter]) reach the key.
    np.testing.assert_array_equal(layer(x, training=True)[0], [7, 0])
    np.testing.assert_array_equal(layer(x, training=True)[0], [7, 1])
    graph_call = tf.function(lambda x: layer(x, training=True))
    np.testing.assert_array_equal(graph_call(x)[0], [7, 2])
    np.testing.assert_array_equal(graph_call(x)[0], [7, 3])
    np.testing.assert_array_equal(layer(x, training=False)[0], [0, 0])  # rng is None


def test_dropout_masks_differ_between_training_steps_in_fit():
    """`model.fit` in graph mode: each step draws a fresh key, so a fresh mask.

    The mask multiplies the parameters elementwise, so a step moves exactly the
    parameters its mask kept: each step's mask is read back from which weights
    moved, and the step's update is checked against SGD with that mask.
    """

    def call_fn(params, rng, inputs, training):
        w = params["w"]
        if training:
            w = w * jax.random.bernoulli(rng, 0.5, w.shape)
        return inputs * w

    features, lr = 16, 0.1
    rs = np.random.RandomState(0)
    x = rs.uniform(0.5, 1.5, (8, features)).astype("float32")
    y = rs.uniform(1.5, 2.5, (8, features)).astype("float32")
    layer = JaxLayer(call_fn, params={"w": np.ones(features, "float32")}, seed=3)
    model = keras.Sequential([keras.Input((features,)), layer])
    model.compile(keras.optimizers.SGD(lr), "mse")  # graph mode: run_eagerly is False
    assert not model.run_eagerly
    weights = [np.asarray(layer.get_params()["w"])]

    class RecordWeights(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights.append(np.asarray(layer.get_params()["w"]))

    history = model.fit(
        x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[RecordWeights()]
    )
    assert len(weights) == 5  # one step per epoch
    masks = []
    for before, after in zip(weights, weights[1:]):
        mask = (before != after).astype("float32")
        assert 0 < mask.sum() < features  # some kept, some dropped
        # The step is SGD on mean((x * w * mask - y) ** 2) with this mask.
        grad = 2 * ((x * before * mask - y) * x * mask).mean(0) / features
        np.testing.assert_allclose(after, before - lr * grad, rtol=1e-5, atol=1e-6)
        masks.append(mask)
    for a, b in zip(masks, masks[1:]):
        assert not np.array_equal(a, b)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_building_inside_tf_function_raises_clear_error():
    layer = JaxLayer(linear_call, linear_init)
    x = _data(3)[0]
    with pytest.raises(ValueError, match=r"cannot be built inside a `tf.function`.*build"):
        tf.function(lambda x: layer(x))(x)
    assert not layer.weights  # nothing half-built
    expected = layer(x)  # building eagerly works, and the graph call then too
    np.testing.assert_allclose(tf.function(lambda x: layer(x))(x), expected, rtol=1e-6)


def test_subclassed_model_built_by_keras_shape_inference_trains():
    class Wrapper(keras.Model):
        def __init__(self):
            super().__init__()
            self.inner = JaxLayer(linear_call, linear_init)

        def call(self, inputs, training=False):
            return self.inner(inputs, training=training)

    model = Wrapper()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = _data(8)
    model(x)  # build
    before = [v.numpy().copy() for v in model.trainable_weights]
    loss_before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False)
    assert len(model.trainable_weights) == 2
    assert all(not np.allclose(a, v.numpy()) for a, v in zip(before, model.trainable_weights))
    assert model.evaluate(x, y, verbose=0) < loss_before  # a stateless model: comparable
    assert np.isfinite(history.history["loss"]).all()


def test_native_serialization_platforms_is_honoured():
    x = _data(3)[0]
    cpu = JaxLayer(linear_call, linear_init, native_serialization_platforms=("cpu", "cuda"))
    cpu_out = cpu(x)
    np.testing.assert_allclose(cpu_out, linear_call(cpu.get_params(), x), rtol=1e-5, atol=1e-6)
    tpu_only = JaxLayer(
        linear_call, params=cpu.get_params(), native_serialization_platforms=["tpu"]
    )
    with pytest.raises(tf.errors.NotFoundError, match="not among the platforms"):
        tpu_only(x)


def test_save_and_load_model_give_identical_outputs(tmp_path):
    x, y = _data(6)
    layer = JaxLayer(counting_call, counting_init, name="jax_block")
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((6, 2), "float32"), batch_size=3, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded_layer = loaded.get_layer("jax_block")
    assert int(loaded_layer.get_state()["steps"]) == 2


def test_export_tf_saved_model_serves_identical_outputs(tmp_path):
    x = _data(5)[0]
    layer = JaxLayer(counting_call, counting_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((5, 3), "float32"), batch_size=5, verbose=0)
    expected = model.predict(x, verbose=0)
    path = os.path.join(tmp_path, "exported")
    model.export(path, format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(path)
    np.testing.assert_allclose(served.serve(tf.constant(x)), expected, rtol=1e-6, atol=1e-6)
    # The batch dimension stays polymorphic in the exported graph.
    np.testing.assert_allclose(served.serve(tf.constant(x[:2])), expected[:2], rtol=1e-6, atol=1e-6)


def test_conversions_are_released_with_the_layer():
    import gc
    import weakref

    layer = JaxLayer(linear_call, linear_init)
    layer(_data(2)[0])
    program, bridge = weakref.ref(layer._program), layer._bridge
    assert len(bridge._conversions) >= 1
    del layer
    gc.collect()
    assert program() is None


def centering_call(params, inputs):
    """Per-example model under `vmap` with a batch mean (`pmean`, as BatchNorm does).

    jax2tf cannot trace `pmean` over a vmapped axis of symbolic size
    (`InconclusiveDimensionOperation`): it needs a concrete batch size.
    """

    def single(x):
        h = x @ params["w"] + params["b"]
        return h - jax.lax.pmean(h, "batch")

    return jax.vmap(single, axis_name="batch")(inputs)


def centering_reference(params, inputs):
    h = inputs @ params["w"] + params["b"]
    return h - h.mean(axis=0)


def _sgd_reference(params, x, y, batch_size, lr):
    def loss(params, xb, yb):
        return jnp.mean((centering_reference(params, xb) - yb) ** 2)

    for start in range(0, len(x), batch_size):
        grads = jax.grad(loss)(params, x[start : start + batch_size], y[start : start + batch_size])
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return params


def test_batch_mean_model_falls_back_to_concrete_shapes_eager_and_fixed_graph():
    layer = JaxLayer(centering_call, linear_init)
    for n in (5, 2):  # eager: converted per batch size
        x = _data(n)[0]
        out = layer(x, training=True)
        expected = centering_reference(layer.get_params(), x)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    spec = tf.TensorSpec((3, 4), tf.float32)  # graph, fully known shape
    graph_call = tf.function(lambda x: layer(x, training=True), input_signature=[spec])
    x = _data(3)[0]
    np.testing.assert_allclose(
        graph_call(x), centering_reference(layer.get_params(), x), rtol=1e-5, atol=1e-6
    )


def test_batch_mean_model_with_unknown_batch_in_graph_raises_clear_error():
    x, y = _data(10)
    layer = JaxLayer(centering_call, linear_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    # 10 samples in batches of 4: the last batch is partial, so Keras traces
    # with an unknown batch size.
    with pytest.raises(ValueError, match=r"symbolic batch.*unknown.*drop_remainder"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    graph_call = tf.function(
        lambda x: layer(x), input_signature=[tf.TensorSpec((None, 4), tf.float32)]
    )
    with pytest.raises(ValueError, match=r"run_eagerly=True"):
        graph_call(x)


@pytest.mark.parametrize("mode", ["drop_remainder", "run_eagerly"])
def test_batch_mean_model_trains_with_the_documented_fixes(mode):
    x, y = _data(10)
    layer = JaxLayer(centering_call, linear_init)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(keras.optimizers.SGD(0.1), "mse", run_eagerly=mode == "run_eagerly")
    initial = layer.get_params()
    if mode == "drop_remainder":
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True)
        model.fit(data, epochs=1, shuffle=False, verbose=0)
        expected = _sgd_reference(initial, x[:8], y[:8], 4, 0.1)
    else:
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 4 + 4 + 2
        expected = _sgd_reference(initial, x, y, 4, 0.1)
    for name in ("w", "b"):
        np.testing.assert_allclose(layer.get_params()[name], expected[name], rtol=1e-4, atol=1e-5)


def test_reshape_by_half_batch_falls_back_or_raises_clearly():
    def call_fn(params, inputs):
        h = linear_call(params, inputs)
        return jnp.reshape(h, (h.shape[0] // 2, -1))  # symbolic shapes cannot do this

    layer = JaxLayer(call_fn, linear_init)
    x = _data(6)[0]
    out = layer(x)
    np.testing.assert_allclose(
        out, linear_call(layer.get_params(), x).reshape(3, 6), rtol=1e-5, atol=1e-6
    )
    graph_call = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec((None, 4))])
    with pytest.raises(ValueError, match=r"unknown dimensions.*fixed|same size"):
        graph_call(x)


@jax.custom_vjp
def _mean_scaled(x):
    return x


def _mean_scaled_fwd(x):
    return x, None


def _mean_scaled_bwd(_, g):
    return (g / float(g.shape[0]),)  # a backward pass that needs a concrete batch size


_mean_scaled.defvjp(_mean_scaled_fwd, _mean_scaled_bwd)


def test_gradient_needing_a_concrete_batch_size_falls_back_to_fixed_shapes():
    def call_fn(params, inputs):
        return _mean_scaled(linear_call(params, inputs))

    layer = JaxLayer(call_fn, linear_init)
    x = _data(4)[0]
    layer(x)
    params = layer.get_params()

    @tf.function(input_signature=[tf.TensorSpec((4, 4), tf.float32)])
    def grads(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, training=True))
        return tape.gradient(loss, layer.trainable_weights)

    got = grads(x)
    expected = jax.grad(lambda p: jnp.sum(call_fn(p, x)))(params)
    for variable, value in zip(layer.trainable_weights, got, strict=True):
        name = variable.path.split("/")[-1]
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)
