"""The PyTorch bridge: DLPack crossing, autograd through `jax.vjp`, Keras workflows.

Every value is checked against a pure-JAX reference computed in the test.
"""

from __future__ import annotations

import pytest

from conftest import BACKEND, to_numpy, tree_allclose

if BACKEND != "torch":
    pytest.skip(
        f"PyTorch bridge tests run only with KERAS_BACKEND=torch (this run: {BACKEND})",
        allow_module_level=True,
    )

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from jaxlayer import JaxLayer  # noqa: E402
from jaxlayer._backends import get_bridge  # noqa: E402

pytestmark = pytest.mark.needs_training

FEATURES = 5


@keras.saving.register_keras_serializable(package="test_backend_torch")
def mlp_init(rng, inputs):
    k1, k2 = jax.random.split(rng)
    return {
        "dense": {
            "kernel": jax.random.normal(k1, (inputs.shape[-1], 8)) * 0.3,
            "bias": jnp.zeros(8),
        },
        "out": {"kernel": jax.random.normal(k2, (8, 3)) * 0.3, "bias": jnp.full(3, 0.1)},
    }


def mlp_apply(params, x):
    h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]


@keras.saving.register_keras_serializable(package="test_backend_torch")
def mlp_call(params, inputs):
    return mlp_apply(params, inputs)


@keras.saving.register_keras_serializable(package="test_backend_torch")
def stateful_init(rng, inputs):
    state = {"mean": jnp.zeros(inputs.shape[-1]), "steps": jnp.zeros((), jnp.int32)}
    return mlp_init(rng, inputs), state


@keras.saving.register_keras_serializable(package="test_backend_torch")
def stateful_call(params, state, inputs, training):
    # A BatchNorm-style running mean, updated in training only; the state
    # also scales the input so that a stale residual would show in gradients.
    if training:
        mean = inputs.mean(axis=0)
        state = {"mean": 0.9 * state["mean"] + 0.1 * mean, "steps": state["steps"] + 1}
    else:
        mean = state["mean"]
    return mlp_apply(params, inputs - mean), state


@keras.saving.register_keras_serializable(package="test_backend_torch")
def dropout_call(params, rng, inputs, training):
    y = mlp_apply(params, inputs)
    if training:
        keep = jax.random.bernoulli(rng, 0.5, y.shape)
        y = jnp.where(keep, y / 0.5, 0.0)
    return y


def data(batch=4, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, FEATURES)).astype("float32")


def built_layer(call_fn=mlp_call, init_fn=mlp_init, **kwargs):
    layer = JaxLayer(call_fn, init_fn, **kwargs)
    layer(torch.from_numpy(data()))
    return layer


def grad_of(variable):
    return to_numpy(variable.value.grad)


def zero_grads(layer):
    for variable in layer.trainable_variables:
        variable.value.grad = None


def param_grads(layer):
    return layer._params_layout.rebuild([grad_of(v) for v in layer._param_variables])


def loss_fn(y):
    return (y**2).sum()


# ---------------------------------------------------------------- gradients


def test_outputs_and_gradients_match_jax_for_params_and_inputs():
    layer = built_layer()
    x_np = data(seed=1)
    x = torch.tensor(x_np, requires_grad=True)
    y = layer(x)
    loss_fn(y).backward()

    params = layer.get_params()
    ref_y = mlp_apply(params, jnp.asarray(x_np))
    ref_gp, ref_gx = jax.grad(lambda p, x: loss_fn(mlp_apply(p, x)), argnums=(0, 1))(
        params, jnp.asarray(x_np)
    )
    tree_allclose(y.detach(), ref_y)
    tree_allclose(param_grads(layer), ref_gp)
    tree_allclose(x.grad, ref_gx)


def test_public_dlpack_fallback_gives_the_same_outputs_and_gradients(monkeypatch):
    """The bridge's private jaxlib fast paths switch off when a probe fails;
    the public DLPack path taken then must give the same numbers."""
    from jaxlayer._backends import torch as bridge

    layer = built_layer()
    x_np = data(seed=2)

    def run():
        x = torch.tensor(x_np, requires_grad=True)
        y = layer(x)
        loss_fn(y).backward()
        grads = [v.value.grad.clone() for v in layer._param_variables]
        for v in layer._param_variables:
            v.value.grad = None
        return y.detach().clone(), x.grad.clone(), grads

    fast = run()
    monkeypatch.setattr(bridge, "_CPU_IMPORT", None)
    monkeypatch.setattr(bridge, "_CPU_EXPORT", None)
    imported = []
    public = jax.dlpack.from_dlpack
    monkeypatch.setattr(bridge.jax.dlpack, "from_dlpack", lambda t: imported.append(1) or public(t))
    slow = run()
    assert imported, "the public jax.dlpack path was not taken"
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
        torch.testing.assert_close(a, b)


@keras.saving.register_keras_serializable(package="test_backend_torch")
def pytree_call(params, inputs):
    h = inputs["a"] * params["scale"] + inputs["b"][:, :1] * params["shift"] * params["count"]
    return {"y": h, "argmax": jnp.argmax(h, axis=-1)}, (h.sum(axis=-1),)


def test_pytree_inputs_int_outputs_and_int_params():
    # An int param leaf becomes a non-trainable variable: no gradient for it.
    params = {"scale": jnp.arange(1.0, 4.0), "shift": jnp.float32(0.5), "count": jnp.int32(2)}
    layer = JaxLayer(pytree_call, params=params)
    a_np, b_np = data(3, 2)[:, :3], data(3, 3)[:, :2]
    a = torch.tensor(a_np, requires_grad=True)
    b = torch.tensor(b_np)  # no gradient requested for this input
    out = layer({"a": a, "b": b})
    assert not out[0]["argmax"].is_floating_point()
    assert not out[0]["argmax"].requires_grad
    (loss_fn(out[0]["y"]) + out[1][0].sum()).backward()

    def ref_loss(p, a):
        y, (s,) = pytree_call(p, {"a": a, "b": jnp.asarray(b_np)})
        return loss_fn(y["y"]) + s.sum()

    float_params = {k: v for k, v in params.items() if k != "count"}
    ref_gp, ref_ga = jax.grad(
        lambda fp, a: ref_loss({**fp, "count": params["count"]}, a), argnums=(0, 1)
    )(float_params, jnp.asarray(a_np))
    ref_out = pytree_call(params, {"a": jnp.asarray(a_np), "b": jnp.asarray(b_np)})
    tree_allclose(jax.tree.map(lambda t: t.detach(), out), ref_out)
    tree_allclose(grad_of(layer.params["scale"]), ref_gp["scale"])
    tree_allclose(grad_of(layer.params["shift"]), ref_gp["shift"])
    assert layer.params["count"].value.grad is None
    assert b.grad is None
    tree_allclose(a.grad, ref_ga)


def test_non_contiguous_input_is_copied_correctly():
    layer = built_layer()
    base = torch.from_numpy(data(FEATURES, seed=4).T.copy())  # (5, 5)
    x = base.T  # a transposed view: not contiguous
    assert not x.is_contiguous()
    y = layer(x)
    tree_allclose(y.detach(), mlp_apply(layer.get_params(), jnp.asarray(x.numpy())))


def test_compiles_once_per_shape():
    layer = built_layer()
    x = torch.from_numpy(data())
    layer(x, training=True).sum().backward()
    count = layer._program.trace_count
    for seed in range(3):
        layer(torch.from_numpy(data(seed=seed)), training=True).sum().backward()
    assert layer._program.trace_count == count
    layer(torch.from_numpy(data(batch=7)), training=True).sum().backward()
    assert layer._program.trace_count == count + 1


# ------------------------------------------------------------ buffer safety


def test_in_place_change_of_input_after_call_leaves_result_and_backward_raises_as_torch():
    layer = built_layer()
    x_np = data(seed=5)
    x = torch.tensor(x_np, requires_grad=True)
    plain = torch.tensor(x_np)
    y = layer(x)
    y_plain = layer(plain)
    expected = mlp_apply(layer.get_params(), jnp.asarray(x_np))
    with torch.no_grad():
        x.mul_(-3.0).add_(7.0)
    plain.zero_()
    tree_allclose(y.detach(), expected)
    tree_allclose(y_plain.detach(), expected)
    # The backward reads the input again (no hidden copy is kept): like
    # torch's own layers, it refuses an input changed in place since.
    for output in (y, y_plain):
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss_fn(output).backward()


def test_in_place_change_of_params_after_call_raises_at_backward_as_torch():
    layer = built_layer()
    x_np = data(seed=6)
    y = layer(torch.from_numpy(x_np))
    with torch.no_grad():
        for variable in layer.trainable_variables:
            variable.value.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss_fn(y).backward()
    reference = torch.nn.Linear(3, 2)
    out = reference(torch.ones(1, 3, requires_grad=True))
    with torch.no_grad():
        reference.weight.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_forward_returns_no_copy_of_what_backward_reads_and_converts_each_tensor_once(monkeypatch):
    """Guards the bridge's per-call traffic (benchmarks/RESULTS.md section 8).

    The backward reads the kernels and the input from torch again, so the
    forward returns no copy of them; every tensor crosses once per pass.
    """
    from jaxlayer._backends import torch as bridge

    layer = built_layer()
    counts = {"to_jax": 0, "to_torch": 0}
    to_jax, to_torch = bridge._tensor_to_jax, bridge._jax_to_tensor

    def counting(name, fn):
        def wrapped(value):
            counts[name] += 1
            return fn(value)

        return wrapped

    monkeypatch.setattr(bridge, "_tensor_to_jax", counting("to_jax", to_jax))
    monkeypatch.setattr(bridge, "_jax_to_tensor", counting("to_torch", to_torch))
    x = torch.tensor(data(seed=9), requires_grad=True)
    y = layer(x)
    # Forward: 4 params and the input in; the output out (no state).
    assert counts == {"to_jax": 5, "to_torch": 1}
    residual_layout, returned = y.grad_fn.residuals
    names = [v.name for v in layer._param_variables]
    kernels = {names.index("dense.kernel"), names.index("out.kernel")}
    assert residual_layout.reused() == sorted(kernels | {len(names)})  # + the input
    kernel_shapes = {(FEATURES, 8), (8, 3)}
    assert not [r.shape for r in returned if tuple(r.shape) in kernel_shapes | {(4, FEATURES)}]
    loss_fn(y).backward()
    # Backward: the 2 kernels, the input and the cotangent in; 4 + 1 gradients out.
    assert counts == {"to_jax": 5 + 4, "to_torch": 1 + 5}
    ref_gp, ref_gx = jax.grad(lambda p, x: loss_fn(mlp_apply(p, x)), argnums=(0, 1))(
        layer.get_params(), jnp.asarray(data(seed=9))
    )
    tree_allclose(param_grads(layer), ref_gp)
    tree_allclose(x.grad, ref_gx)


def test_in_place_change_of_output_before_backward_raises():
    layer = built_layer()
    y = layer(torch.from_numpy(data()))
    with torch.no_grad():
        y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss_fn(y).backward()


def test_results_sharing_an_input_buffer_are_copied():
    # `jax.jit` returns fresh buffers today; the guard covers a JAX that
    # forwards an input buffer to an output or a residual.
    from jaxlayer._backends.torch import _buffer_pointers, _unalias

    source = torch.arange(4.0)
    shared = jax.dlpack.from_dlpack(source)
    other = jnp.ones(3)
    out = _unalias({"a": shared, "b": other}, _buffer_pointers([shared]))
    assert out["b"] is other
    assert out["a"].unsafe_buffer_pointer() != source.data_ptr()
    source.mul_(10.0)
    np.testing.assert_array_equal(np.asarray(out["a"]), np.arange(4.0))


def test_get_params_and_initial_params_are_copies():
    given = mlp_init(jax.random.key(0), jnp.ones((1, FEATURES)))
    given_np = jax.tree.map(np.array, given)
    layer = JaxLayer(mlp_call, params=given)
    snapshot = layer.get_params()
    with torch.no_grad():
        for variable in layer.trainable_variables:
            variable.value.add_(1.0)
    tree_allclose(given, given_np)  # the user's arrays were not updated in place
    tree_allclose(snapshot, given_np)  # nor the earlier get_params() result
    tree_allclose(layer.get_params(), jax.tree.map(lambda a: a + 1.0, given_np))


# --------------------------------------------------------------- autograd


def test_retain_graph_backward_twice_accumulates_the_same_gradients():
    layer = built_layer()
    x_np = data(seed=7)
    x = torch.tensor(x_np, requires_grad=True)
    loss = loss_fn(layer(x))
    loss.backward(retain_graph=True)
    first = param_grads(layer)
    first_x = to_numpy(x.grad).copy()
    loss.backward()
    tree_allclose(param_grads(layer), jax.tree.map(lambda g: 2 * g, first))
    tree_allclose(x.grad, 2 * first_x)
    ref_gp = jax.grad(lambda p: loss_fn(mlp_apply(p, jnp.asarray(x_np))))(layer.get_params())
    tree_allclose(first, ref_gp)


def test_second_order_gradients_raise_a_clear_error():
    layer = built_layer()
    x = torch.tensor(data(), requires_grad=True)
    (gx,) = torch.autograd.grad(loss_fn(layer(x)), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_no_grad_call_returns_plain_tensors():
    layer = built_layer()
    x = torch.tensor(data(), requires_grad=True)
    with torch.no_grad():
        y = layer(x)
    assert not y.requires_grad and y.grad_fn is None
    tree_allclose(y, mlp_apply(layer.get_params(), jnp.asarray(data())))


def test_bfloat16_crosses_in_both_directions():
    layer = JaxLayer(mlp_call, mlp_init, dtype="bfloat16")
    x_np = data(seed=8)
    x = torch.tensor(x_np, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    loss_fn(y.float()).backward()
    assert x.grad.dtype == torch.bfloat16
    assert all(v.value.grad.dtype == torch.bfloat16 for v in layer.trainable_variables)

    params = layer.get_params()
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    x_bf16 = jnp.asarray(x_np, jnp.bfloat16)
    ref_gp, ref_gx = jax.grad(
        lambda p, x: loss_fn(mlp_apply(p, x).astype(jnp.float32)), argnums=(0, 1)
    )(params, x_bf16)
    # bf16 rounding depends on how XLA fuses the ops (jit vs eager reference).
    expected = mlp_apply(params, x_bf16).astype(jnp.float32)
    tree_allclose(y.float().detach(), expected, rtol=2e-2, atol=1e-2)
    as_f32 = lambda t: np.asarray(
        to_numpy(t.float()) if isinstance(t, torch.Tensor) else t, "float32"
    )  # noqa: E731
    tree_allclose(as_f32(x.grad), np.asarray(ref_gx, "float32"), rtol=2e-2, atol=1e-2)
    got = jax.tree.map(
        as_f32, layer._params_layout.rebuild([v.value.grad for v in layer._param_variables])
    )
    tree_allclose(
        got, jax.tree.map(lambda g: np.asarray(g, "float32"), ref_gp), rtol=2e-2, atol=1e-2
    )


# ---------------------------------------------------------- state and rng


def test_state_updates_in_training_only_and_gradients_flow():
    layer = built_layer(stateful_call, stateful_init)
    x_np = data(seed=9)
    state0 = layer.get_state()
    params = layer.get_params()

    y = layer(torch.from_numpy(x_np), training=False)
    tree_allclose(layer.get_state(), state0)
    tree_allclose(y, stateful_call(params, state0, jnp.asarray(x_np), False)[0])

    y = layer(torch.from_numpy(x_np), training=True)
    ref_y, ref_state = stateful_call(params, state0, jnp.asarray(x_np), True)
    tree_allclose(y.detach(), ref_y)
    tree_allclose(layer.get_state(), ref_state)
    assert int(layer.get_state()["steps"]) == 1
    loss_fn(y).backward()
    ref_gp = jax.grad(lambda p: loss_fn(stateful_call(p, state0, jnp.asarray(x_np), True)[0]))(
        params
    )
    tree_allclose(param_grads(layer), ref_gp)
    assert all(v.value.grad is None for v in layer.non_trainable_variables)


def test_fresh_rng_on_every_training_call_and_none_in_inference():
    layer = built_layer(dropout_call, mlp_init, seed=3)
    x = torch.from_numpy(data(seed=10))
    reference = mlp_apply(layer.get_params(), jnp.asarray(data(seed=10)))
    first = to_numpy(layer(x, training=True).detach())
    second = to_numpy(layer(x, training=True).detach())
    assert not np.allclose(first, second)
    for out in (first, second):
        kept = out != 0
        assert 0 < kept.sum() < kept.size
        np.testing.assert_allclose(out[kept], 2 * np.asarray(reference)[kept], rtol=1e-5, atol=1e-6)
    tree_allclose(layer(x, training=False), reference)


def test_seed_to_key_keeps_all_32_bits():
    key = get_bridge().seed_to_key(torch.tensor([-1, 2**31 - 1], dtype=torch.int32))
    assert key.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(key), np.array([2**32 - 1, 2**31 - 1], np.uint32))
    # A raw uint32 key works with jax.random.
    assert jax.random.uniform(key).shape == ()


# ------------------------------------------------------- Keras workflows


def make_model(call_fn=mlp_call, init_fn=mlp_init, **kwargs):
    inputs = keras.Input((FEATURES,))
    outputs = JaxLayer(call_fn, init_fn, name="jax", **kwargs)(inputs)
    return keras.Model(inputs, outputs)


def test_one_sgd_step_matches_the_reference_step():
    model = make_model()
    layer = model.get_layer("jax")
    x_np, y_np = data(8, 11), data(8, 12)[:, :3]
    params = layer.get_params()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(x_np, y_np)

    def mse(p):
        return jnp.mean((mlp_apply(p, jnp.asarray(x_np)) - y_np) ** 2)

    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(mse)(params))
    tree_allclose(layer.get_params(), expected)


def test_fit_evaluate_predict_save_load_and_summary(tmp_path):
    model = make_model(stateful_call, stateful_init)
    layer = model.get_layer("jax")
    x_np, y_np = data(32, 13), data(32, 14)[:, :3]
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    before = model.evaluate(x_np, y_np, verbose=0)
    history = model.fit(x_np, y_np, batch_size=8, epochs=3, verbose=0)
    after = model.evaluate(x_np, y_np, verbose=0)
    assert after < before
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert int(layer.get_state()["steps"]) == 12  # 4 batches x 3 epochs, not evaluate

    predicted = model.predict(x_np, batch_size=8, verbose=0)
    expected, _ = stateful_call(layer.get_params(), layer.get_state(), jnp.asarray(x_np), False)
    # Looser than float32 exactness: on GPUs XLA's default float32 matmuls use
    # TF32, which rounds the jitted and the eager reference differently.
    tree_allclose(predicted, expected, rtol=2e-3, atol=1e-3)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x_np, verbose=0), model.predict(x_np, verbose=0))
    tree_allclose(loaded.get_layer("jax").get_state(), layer.get_state())

    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    text = "\n".join(lines)
    trainable = FEATURES * 8 + 8 + 8 * 3 + 3
    non_trainable = FEATURES + 1
    assert model.count_params() == trainable + non_trainable
    assert f"Trainable params: {trainable}" in text
    assert f"Non-trainable params: {non_trainable}" in text


def test_torch_compile_around_a_model_runs_or_falls_back():
    model = make_model()
    x = torch.from_numpy(data(seed=15))
    expected = to_numpy(model(x))
    compiled = torch.compile(model)
    out = compiled(x)
    tree_allclose(out.detach(), expected)
    loss_fn(out).backward()
    ref_gp = jax.grad(lambda p: loss_fn(mlp_apply(p, jnp.asarray(data(seed=15)))))(
        model.get_layer("jax").get_params()
    )
    tree_allclose(param_grads(model.get_layer("jax")), ref_gp)


def test_fit_with_jit_compile_uses_torch_compile_without_crashing():
    model = make_model()
    x_np, y_np = data(16, 16), data(16, 17)[:, :3]
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    history = model.fit(x_np, y_np, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]


# The uint32-state model of the contract suite: a raw PRNG key and a counter
# with the high bits set (Keras-torch stores uint32 variables as int64).
from test_contract import UINT32_KEY as KEY  # noqa: E402
from test_contract import mlp_apply as contract_mlp_apply  # noqa: E402
from test_contract import uint32_state_call, uint32_state_init  # noqa: E402


def test_uint32_state_round_trips_exactly_through_calls_and_fit():
    x = np.linspace(-1, 1, 4 * FEATURES, dtype="float32").reshape(4, FEATURES)
    layer = JaxLayer(uint32_state_call, uint32_state_init, seed=0)
    model = keras.Sequential([keras.Input((FEATURES,)), layer])
    model.predict(x, verbose=0)  # inference, no gradients: the state is unchanged
    state = layer.get_state()
    assert state["key"].dtype == jnp.uint32 and state["count"].dtype == jnp.uint32
    np.testing.assert_array_equal(state["key"], KEY)
    assert int(state["count"]) == 0xFFFFFFFE

    params = layer.get_params()
    out = layer(torch.from_numpy(x), training=True)  # gradient path (params require grad)
    key, noise_key = jax.random.split(jnp.asarray(KEY))
    expected = contract_mlp_apply(params, x) + 0.1 * jax.random.normal(noise_key, (4, 3))
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.get_state()["key"], key)
    assert int(layer.get_state()["count"]) == 0xFFFFFFFF

    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(x, np.zeros((4, 3), "float32"), batch_size=2, epochs=1, verbose=0)  # 2 steps
    for _ in range(2):
        key, _ = jax.random.split(key)
    state = layer.get_state()
    np.testing.assert_array_equal(state["key"], key)
    assert state["count"].dtype == jnp.uint32 and int(state["count"]) == 1  # wrapped around

    layer.set_state({"key": jnp.asarray(KEY), "count": jnp.asarray(7, jnp.uint32)})
    np.testing.assert_array_equal(layer.get_state()["key"], KEY)
    assert int(layer.get_state()["count"]) == 7
