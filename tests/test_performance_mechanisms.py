"""The mechanisms the performance targets rest on (no timings here).

- Eager calls compile the program once per input shape and reuse it.
- The build holds no second copy of the parameters: the arrays `init_fn`
  returned are released once the variables hold them.
- Nothing imports TensorFlow on the JAX backend (build, fit, predict).
- The JAX backend's direct eager path keeps Keras's behaviour (outputs,
  state updates, RNG advance, mixed precision, nested calls).
- On tensorflow, the backward pass of a training call reuses the forward
  pass's residuals instead of running the forward again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer


def _init_fn(rng, inputs):
    k1, k2 = jax.random.split(rng)
    return {
        "dense1": {
            "kernel": jax.random.normal(k1, (inputs.shape[-1], 16)) * 0.3,
            "bias": jnp.zeros(16),
        },
        "dense2": {"kernel": jax.random.normal(k2, (16, 3)) * 0.3, "bias": jnp.zeros(3)},
    }


def _call_fn(params, inputs):
    h = jax.nn.relu(inputs @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    return h @ params["dense2"]["kernel"] + params["dense2"]["bias"]


def _inputs(batch):
    return keras.ops.convert_to_tensor(
        np.random.default_rng(batch).random((batch, 8), dtype=np.float32)
    )


def test_eager_calls_compile_once_per_input_shape_and_reuse_it():
    layer = JaxLayer(_call_fn, _init_fn)
    x4, x5 = _inputs(4), _inputs(5)
    layer(x4)
    after_first = layer._program.trace_count
    assert after_first >= 1
    for _ in range(5):
        out = layer(x4)
    assert layer._program.trace_count == after_first, "same shape: the compiled function is reused"
    np.testing.assert_allclose(
        to_numpy(out), _call_fn(layer.get_params(), to_numpy(x4)), rtol=1e-5, atol=1e-5
    )
    layer(x5)
    after_second_shape = layer._program.trace_count
    # At most once more (a bridge with a symbolic batch dimension needs none).
    assert after_second_shape <= after_first + 1, "a new batch size compiles at most once"
    layer(x4)
    layer(x5)
    assert layer._program.trace_count == after_second_shape


def _live_jax_bytes():
    return sum(a.nbytes for a in jax.live_arrays())


def test_build_never_holds_two_copies_of_the_parameters():
    n_leaves, rows, cols = 4, 128, 128  # four 64 KiB float32 leaves
    leaf_bytes = rows * cols * 4
    during = []

    class Probe(JaxLayer):
        def add_weight(self, *args, **kwargs):
            during.append(_live_jax_bytes() - baseline)
            return super().add_weight(*args, **kwargs)

    def init_fn(inputs):
        return {f"w{i}": jnp.full((rows, cols), float(i)) for i in range(n_leaves)}

    def call_fn(params, inputs):
        return inputs @ sum(params.values())

    baseline = _live_jax_bytes()
    layer = Probe(call_fn, init_fn)
    layer.build((None, rows))
    assert len(during) == n_leaves
    # The parameters once, plus the leaf being handed over: the arrays
    # init_fn returned are released one by one as their variables appear.
    # (Keeping them all until the end peaks at twice the parameters.)
    assert max(during) <= (n_leaves + 1) * leaf_bytes + 4096, during
    after = _live_jax_bytes() - baseline
    assert after <= n_leaves * leaf_bytes + 4096, (
        f"{after} bytes of JAX arrays left after the build"
    )
    for i, variable in enumerate(sorted(layer.weights, key=lambda v: v.name)):
        np.testing.assert_array_equal(to_numpy(variable.value), np.full((rows, cols), float(i)))


@pytest.mark.skipif(
    BACKEND != "jax",
    reason="checks a fresh KERAS_BACKEND=jax process; run once, in the jax-backend pass",
)
def test_jax_backend_never_imports_tensorflow_in_build_fit_and_predict():
    pytest.importorskip(
        "tensorflow", reason="TensorFlow is not installed, so nothing could import it"
    )
    script = textwrap.dedent(
        """
        import json, sys
        import jax, jax.numpy as jnp, numpy as np, keras
        from jaxlayer import JaxLayer
        seen = {}
        def init_fn(rng, inputs):
            return {"w": jax.random.normal(rng, (inputs.shape[-1], 2)), "b": jnp.zeros(2)}
        def call_fn(params, inputs):
            return inputs @ params["w"] + params["b"]
        layer = JaxLayer(call_fn, init_fn)
        layer(np.ones((2, 4), "float32"))
        seen["build+eager"] = "tensorflow" in sys.modules
        model = keras.Sequential([keras.Input((4,)), JaxLayer(call_fn, init_fn)])
        model.compile("adam", "mse")
        model.fit(np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"), batch_size=4, verbose=0)
        seen["fit"] = "tensorflow" in sys.modules
        model.predict(np.ones((4, 4), "float32"), verbose=0)
        model.predict_on_batch(np.ones((4, 4), "float32"))
        seen["predict"] = "tensorflow" in sys.modules
        print(json.dumps(seen))
        """
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"build+eager": False, "fit": False, "predict": False}


def _stateful_init(rng, inputs):
    return {"w": jnp.full((inputs.shape[-1], 2), 0.5)}, {"count": jnp.zeros((), jnp.int32)}


def _stateful_call(params, state, rng, inputs, training):
    noise = jax.random.uniform(rng, (inputs.shape[0], 2)) if training else 0.0
    return inputs @ params["w"] + noise, {"count": state["count"] + 1}


@pytest.mark.needs_training
def test_direct_eager_calls_update_state_and_advance_the_rng():
    layer = JaxLayer(_stateful_call, _stateful_init, seed=3)
    x = _inputs(2)[:, :4]
    inference = to_numpy(layer(x))
    np.testing.assert_allclose(inference, to_numpy(x) @ np.full((4, 2), 0.5), rtol=1e-6)
    first, second = to_numpy(layer(x, training=True)), to_numpy(layer(x, training=True))
    assert not np.allclose(first, second), "each training call draws a fresh rng key"
    assert int(to_numpy(layer.get_state()["count"])) == 3


@pytest.mark.needs_training
def test_eager_call_inside_an_outer_layer_gets_the_outer_training_flag():
    inner = JaxLayer(_stateful_call, _stateful_init, seed=0)

    class Outer(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def call(self, inputs, training=False):
            return self.inner(inputs)  # no explicit training: inherited

    outer = Outer()
    x = _inputs(2)[:, :4]
    expected = to_numpy(x) @ np.full((4, 2), 0.5)
    np.testing.assert_allclose(to_numpy(outer(x, training=False)), expected, rtol=1e-6)
    trained = to_numpy(outer(x, training=True))
    assert not np.allclose(trained, expected), (
        "training=True reached the inner call_fn (noise added)"
    )


def test_eager_calls_under_mixed_precision_return_the_compute_dtype():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = JaxLayer(_call_fn, _init_fn)
        x = _inputs(3)
        out = layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert keras.backend.standardize_dtype(layer.weights[0].dtype) == "float32"
        out_again = layer(x)
        np.testing.assert_allclose(
            to_numpy(out_again).astype("float32"), to_numpy(out).astype("float32")
        )
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.fixture
def full_path_calls(monkeypatch):
    """Records each call that goes through Keras's `Layer.__call__`."""
    calls = []
    original = keras.layers.Layer.__call__

    def spy(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", spy)
    return calls


def test_plain_eager_call_takes_the_direct_path_on_jax_only(full_path_calls):
    layer = JaxLayer(_call_fn, _init_fn)
    x = _inputs(3)
    layer(x)  # builds (the first call may take the full path)
    full_path_calls.clear()
    layer(x)
    layer(x, training=False)
    # Only the jax bridge runs eager tensors directly; other backends always
    # take Keras's full path.
    assert full_path_calls == ([] if BACKEND == "jax" else ["JaxLayer", "JaxLayer"])


def test_unusual_eager_calls_take_the_full_path(full_path_calls):
    layer = JaxLayer(_call_fn, _init_fn)
    x = _inputs(3)
    layer(x)
    full_path_calls.clear()
    layer(keras.KerasTensor((None, x.shape[1])))  # symbolic
    layer(x, training=np.bool_(False))  # a flag that is not a Python bool
    layer(inputs=x)  # inputs by keyword
    assert full_path_calls == ["JaxLayer"] * 3


def test_mixed_precision_eager_calls_take_the_full_path(full_path_calls):
    # Keras's autocast scope is needed to hand float16 params to call_fn.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = JaxLayer(_call_fn, _init_fn)
        x = _inputs(3)
        layer(x)
        full_path_calls.clear()
        layer(x)
        assert full_path_calls == ["JaxLayer"]
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the jax backend")
def test_eager_call_under_a_distribution_takes_the_full_path(full_path_calls):
    layer = JaxLayer(_call_fn, _init_fn)
    x = _inputs(3)
    layer(x)
    full_path_calls.clear()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()[:1]))
    try:
        layer(x)
    finally:
        keras.distribution.set_distribution(None)
    assert full_path_calls == ["JaxLayer"]


def _xla_call_module_programs(graph_def) -> set:
    """The StableHLO text of every `XlaCallModule` op in a TF graph and its functions.

    Uses JAX internals (the portable-artifact reader that `jax.export` uses
    for `Exported.mlir_module`) to read the serialized programs.
    """
    from jax._src.interpreters import mlir
    from jax._src.lib import _jax

    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    programs = set()
    for node in nodes:
        if node.op == "XlaCallModule":
            with mlir.make_ir_context():
                module = _jax.mlir.deserialize_portable_artifact(node.attr["module"].s)
                programs.add(mlir.module_to_string(module))
    return programs


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the jax2tf bridge's gradient")
def test_tensorflow_backward_reuses_the_forward_residuals():
    """jax2tf's own gradient converts `jax.vjp` of the whole function, so its
    backward op computes `sin(x @ w)` again; ours takes `cos(x @ w)` from the
    forward op's residuals and computes no sine or cosine."""
    import tensorflow as tf

    def call_fn(params, inputs):
        return jnp.sin(inputs @ params["w"])

    layer = JaxLayer(call_fn, params={"w": np.full((3, 2), 0.5, "float32")})
    x = tf.constant(np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3))

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, training=True))
        return tape.gradient(loss, layer.trainable_variables)

    graph_def = gradients.get_concrete_function(x).graph.as_graph_def()
    programs = _xla_call_module_programs(graph_def)
    forward = [p for p in programs if "stablehlo.sine" in p]
    backward = [p for p in programs if "stablehlo.sine" not in p]
    assert len(forward) == 1 and len(backward) == 1, programs
    assert "stablehlo.cosine" in forward[0]  # the residual, computed once
    assert "stablehlo.cosine" not in backward[0]
    # and the gradient is right: d/dw sum(sin(x @ w)) = x^T cos(x @ w)
    expected = x.numpy().T @ np.cos(x.numpy() @ np.full((3, 2), 0.5, "float32"))
    np.testing.assert_allclose(to_numpy(gradients(x)[0]), expected, rtol=1e-5, atol=1e-6)
