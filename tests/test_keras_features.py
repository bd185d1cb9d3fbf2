"""Keras features applied to a JaxLayer, as a Keras user applies them to any
layer: freezing, checkpoint callbacks, wrappers, `summary`, `keras.ops` on its
outputs, compile options and backend-native datasets. Each test checks values
(weights, predictions, counts), and where it makes sense compares with a
stock Keras layer in the same model.

`keras.RematScope` is covered by `tests/test_remat.py`.
"""

from __future__ import annotations

import functools
import re

import jax
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer
from models import dense_init, mlp_apply, mlp_call, stateful_call

X = np.random.RandomState(0).rand(32, 4).astype("float32")
Y = np.random.RandomState(1).rand(32, 3).astype("float32")
HEAD_KERNEL = np.random.RandomState(2).randn(3, 3).astype("float32") * 0.5


def _params():
    return jax.tree.map(np.asarray, dense_init(jax.random.PRNGKey(0), X))


def _state():
    return {"mean": np.zeros(4, "float32"), "steps": np.zeros((), "int32")}


def _model(layer, optimizer="adam", name=None, **compile_kwargs):
    """`layer` followed by a stock Dense head with fixed weights, compiled."""
    head = keras.layers.Dense(3, name="head")
    model = keras.Sequential([keras.Input((4,)), layer, head], name=name)
    head.set_weights([HEAD_KERNEL, np.zeros(3, "float32")])
    if optimizer is not None:
        optimizer = keras.optimizers.Adam(0.01) if optimizer == "adam" else optimizer
        model.compile(optimizer, "mse", **compile_kwargs)
    return model


def _weights(model):
    """Variable values by path without the first component (which Keras
    numbers per instance: `jax_layer_1/...`, `sequential_1/...`)."""
    return {v.path.split("/", 1)[1]: to_numpy(v.value).copy() for v in model.variables}


def _fit(model, epochs=2, **kwargs):
    model.fit(X, Y, epochs=epochs, batch_size=8, verbose=0, shuffle=False, **kwargs)


def _assert_same_values(loaded, model):
    """The same variables, by name in order, with bit-identical values."""
    assert [v.name for v in loaded.variables] == [v.name for v in model.variables]
    for a, b in zip(loaded.variables, model.variables):
        np.testing.assert_array_equal(to_numpy(a.value), to_numpy(b.value), err_msg=b.path)


def _any_equal(loaded, model):
    """Whether any variable of `loaded` holds the value of `model`'s."""
    return any(
        np.array_equal(to_numpy(a.value), to_numpy(b.value))
        for a, b in zip(loaded.variables, model.variables, strict=True)
        if a.trainable
    )


def _running_mean(epochs):
    """`stateful_call`'s running mean after `_fit` (batches of 8, in order)."""
    mean = np.zeros(4, "float32")
    for _ in range(epochs):
        for start in range(0, len(X), 8):
            mean = 0.9 * mean + 0.1 * X[start : start + 8].mean(0)
    return mean


def _assert_same_weights(a, b, rtol=1e-6, atol=1e-7):
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_allclose(a[path], b[path], rtol=rtol, atol=atol, err_msg=path)


# ------------------------------------------------------------------ freezing


def freeze_by_pattern(layer, pattern):
    """The README's recipe: freeze the parameters whose names match."""
    for v in layer.trainable_variables:
        v.trainable = not re.match(pattern, v.name)


@pytest.mark.needs_training
def test_freezing_variables_by_path_pattern_trains_only_the_rest():
    layer = JaxLayer(mlp_call, params=_params())
    model = _model(layer, optimizer=None)
    freeze_by_pattern(layer, r"dense\.")
    assert sorted(v.name for v in layer.trainable_variables) == ["out.bias", "out.kernel"]
    assert sorted(v.name for v in layer.non_trainable_variables) == ["dense.bias", "dense.kernel"]
    model.compile(keras.optimizers.Adam(0.01), "mse")  # the optimizer is built for the trainable ones
    before = _weights(model)
    _fit(model)
    after = _weights(model)
    for path in before:
        frozen = path.startswith("dense.") or path.startswith("dense/")  # torch maps the dots to `/`
        assert np.array_equal(after[path], before[path]) == frozen, path
    # Adam's two slots per trainable variable: 2 in the layer, 2 in the head.
    assert len(model.optimizer.variables) == 2 + 2 * 4

    # Unfrozen, they train again after the next compile.
    for v in layer.non_trainable_variables:
        v.trainable = True
    model.compile(keras.optimizers.Adam(0.01), "mse")
    _fit(model, epochs=1)
    unfrozen = _weights(model)
    assert all(not np.array_equal(unfrozen[p], after[p]) for p in after)


@pytest.mark.skipif(BACKEND not in ("jax", "tensorflow"), reason="keras.layers.JaxLayer: jax and tensorflow only")
def test_keras_jax_layer_variables_have_no_path_to_freeze_by():
    # The comparison row in the README: Keras's own layer names its
    # variables by position, ours by param path.
    ours = JaxLayer(mlp_call, params=_params())
    theirs = keras.layers.JaxLayer(mlp_call, params=_params())
    theirs(X[:2])
    assert sorted(v.name for v in ours.variables) == ["dense.bias", "dense.kernel", "out.bias", "out.kernel"]
    assert sorted(v.name for v in theirs.variables) == ["variable", "variable_1", "variable_2", "variable_3"]


def _freeze_without_compile(model, variable):
    """Fits, freezes `variable`, fits again without compiling: what happens."""
    _fit(model, epochs=1)
    variable.trainable = False
    before = to_numpy(variable.value).copy()
    try:
        _fit(model, epochs=1)
    except ValueError as error:
        assert "optimizer was built with" in str(error)
        return "error"
    return "kept" if np.array_equal(to_numpy(variable.value), before) else "moved"


@pytest.mark.needs_training
def test_changing_trainability_without_compile_behaves_as_for_stock_dense():
    layer = JaxLayer(mlp_call, params=_params())
    ours = _freeze_without_compile(_model(layer), layer.params["dense"]["kernel"])
    keras.backend.clear_session()
    dense = keras.layers.Dense(3)
    stock = _freeze_without_compile(_model(dense), dense.kernel)
    assert ours == stock
    # jax: the optimizer refuses the new variable list; tensorflow: the
    # traced train function still updates the variable; torch: it is frozen.
    assert ours == {"jax": "error", "tensorflow": "moved", "torch": "kept"}[BACKEND]


@pytest.mark.needs_training
def test_layer_trainable_false_freezes_params_while_stock_dense_trains():
    layer = JaxLayer(stateful_call, params=_params(), state=_state())
    layer.trainable = False
    model = _model(layer)
    assert layer.trainable_variables == []
    before = _weights(model)
    params_before = jax.tree.map(np.asarray, layer.get_params())
    _fit(model)
    after = _weights(model)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, layer.get_params()), params_before)
    assert not np.array_equal(after["head/kernel"], before["head/kernel"])
    # Unlike Keras's BatchNormalization (which runs in inference mode when
    # frozen), a frozen JaxLayer is still called with training=True in fit:
    # its state keeps updating. 2 epochs x 4 batches.
    assert int(layer.get_state()["steps"]) == 8
    np.testing.assert_allclose(np.asarray(layer.get_state()["mean"]), _running_mean(epochs=2), rtol=1e-5)


@pytest.mark.needs_training
def test_frozen_layer_keeps_its_state_when_a_subclassed_model_calls_it_in_inference():
    class FineTune(keras.Model):
        def __init__(self):
            super().__init__()
            self.body = JaxLayer(stateful_call, params=_params(), state=_state())
            self.body.trainable = False
            self.head = keras.layers.Dense(3, name="head")

        def call(self, inputs, training=False):
            return self.head(self.body(inputs, training=False))

    model = FineTune()
    model(X[:1])
    model.head.set_weights([HEAD_KERNEL, np.zeros(3, "float32")])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    body_before = [to_numpy(v.value).copy() for v in model.body.variables]
    head_before = to_numpy(model.head.kernel.value).copy()
    _fit(model)
    for v, value in zip(model.body.variables, body_before):
        np.testing.assert_array_equal(to_numpy(v.value), value, err_msg=v.name)
    assert not np.array_equal(to_numpy(model.head.kernel.value), head_before)


@pytest.mark.needs_training
def test_functional_model_replaces_a_training_false_given_at_construction():
    # Keras 3 functional models pass fit's `training=True` to every layer
    # that takes `training`, whatever the layer was called with when the
    # model was built: the frozen layer's state still updates.
    layer = JaxLayer(stateful_call, params=_params(), state=_state())
    layer.trainable = False
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(layer(inputs, training=False)))
    model.compile(keras.optimizers.Adam(0.01), "mse")
    _fit(model)
    assert int(layer.get_state()["steps"]) == 8

    # Keras's own frozen BatchNormalization keeps its statistics: it checks
    # `self.trainable` itself and runs in inference mode.
    norm = keras.layers.BatchNormalization()
    norm.trainable = False
    stock = keras.Sequential([keras.Input((4,)), norm, keras.layers.Dense(3)])
    stock.compile(keras.optimizers.Adam(0.01), "mse")
    _fit(stock)
    np.testing.assert_array_equal(to_numpy(norm.moving_mean.value), np.zeros(4, "float32"))


# ------------------------------------------------------------- callbacks


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("interrupted")


class _EpochsRun(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.needs_training
def test_backup_and_restore_resumes_to_the_uninterrupted_weights(tmp_path):
    def fresh():
        return _model(JaxLayer(stateful_call, params=_params(), state=_state()))

    uninterrupted = fresh()
    _fit(uninterrupted, epochs=3)
    expected = _weights(uninterrupted)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(fresh(), epochs=3, callbacks=[backup, _Interrupt(2)])
    resumed, epochs_run = fresh(), _EpochsRun()
    _fit(resumed, epochs=3, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), epochs_run])
    assert epochs_run.epochs == [2]
    _assert_same_weights(_weights(resumed), expected)
    assert int(resumed.layers[0].get_state()["steps"]) == 12
    assert len(resumed.optimizer.variables) == len(uninterrupted.optimizer.variables) == 2 + 2 * 6
    for a, b in zip(resumed.optimizer.variables, uninterrupted.optimizer.variables):  # Adam's slots too
        np.testing.assert_allclose(to_numpy(a.value), to_numpy(b.value), rtol=1e-6, atol=1e-7, err_msg=b.name)


@pytest.mark.needs_training
@pytest.mark.parametrize("filename", ["ckpt.weights.h5", "ckpt.keras"])
def test_model_checkpoint_loads_back_into_a_fresh_model(tmp_path, filename):
    model = _model(JaxLayer(stateful_call, params=_params(), state=_state()))
    path = str(tmp_path / filename)
    checkpoint = keras.callbacks.ModelCheckpoint(path, save_weights_only=filename.endswith(".weights.h5"))
    _fit(model, epochs=1, callbacks=[checkpoint])
    expected = model.predict(X, verbose=0)
    if filename.endswith(".weights.h5"):
        loaded = _model(JaxLayer(stateful_call, params=_params(), state=_state()))
        assert not _any_equal(loaded, model)
        loaded.load_weights(path)
    else:
        loaded = keras.models.load_model(path)
    _assert_same_values(loaded, model)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), expected, rtol=1e-6, atol=1e-6)


def _functional(layer, name):
    inputs = keras.Input((4,))
    head = keras.layers.Dense(3, name="head")
    model = keras.Model(inputs, head(layer(inputs)), name=name)
    head.set_weights([HEAD_KERNEL, np.zeros(3, "float32")])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def _stock_body():
    return keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=0), name="body")


def _jax_body():
    return JaxLayer(stateful_call, params=_params(), state=_state(), name="body")


def _fit_with_orbax(model, directory, save_weights_only):
    checkpoint = keras.callbacks.OrbaxCheckpoint(directory, save_weights_only=save_weights_only)
    _fit(model, epochs=1, callbacks=[checkpoint])
    checkpoint.wait_until_finished()
    return model.predict(X, verbose=0)


@pytest.mark.needs_training
@pytest.mark.parametrize("make_body", [_stock_body, _jax_body], ids=["stock_dense", "jax_layer"])
def test_orbax_checkpoint_restores_with_load_weights(tmp_path, make_body):
    # Orbax checkpoints are keyed by variable path (`model/body/dense.kernel`):
    # `load_weights` restores the variables whose paths match, so the fresh
    # model gets the same names (Keras numbers unnamed layers and models).
    model = _model(make_body(), name="model")
    expected = _fit_with_orbax(model, str(tmp_path / "orbax"), save_weights_only=True)
    loaded = _model(make_body(), name="model")
    assert not _any_equal(loaded, model)
    loaded.load_weights(str(tmp_path / "orbax"))
    _assert_same_values(loaded, model)
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), expected)


@pytest.mark.needs_training
@pytest.mark.parametrize("make_body", [_stock_body, _jax_body], ids=["stock_dense", "jax_layer"])
def test_orbax_checkpoint_of_a_functional_model_loads_with_load_model(tmp_path, make_body):
    model = _functional(make_body(), name="model")
    expected = _fit_with_orbax(model, str(tmp_path / "orbax"), save_weights_only=False)
    loaded = keras.models.load_model(str(tmp_path / "orbax"))
    _assert_same_values(loaded, model)
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), expected)
    _assert_same_values(loaded.optimizer, model.optimizer)


@pytest.mark.needs_training
def test_orbax_load_model_of_a_sequential_model_restores_no_stock_layer(tmp_path):
    # A Keras 3.15 limitation, for its own layers: a Sequential model loaded
    # from its config names its variables `body/kernel` where the checkpoint
    # has `model/body/kernel`, and `set_state_tree` skips what does not match.
    model = _model(_stock_body(), name="model")
    expected = _fit_with_orbax(model, str(tmp_path / "orbax"), save_weights_only=False)
    loaded = keras.models.load_model(str(tmp_path / "orbax"))
    assert [v.path for v in model.variables][0] == "model/body/kernel"
    assert [v.path for v in loaded.variables][0] == "body/kernel"
    assert not _any_equal(loaded, model)
    assert not np.allclose(loaded.predict(X, verbose=0), expected)


# ------------------------------------------------------- wrappers, summary


def test_time_distributed_equals_calling_the_layer_per_time_step():
    params = _params()
    sequences = np.random.RandomState(3).rand(6, 5, 4).astype("float32")
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.TimeDistributed(JaxLayer(mlp_call, params=params))])
    expected = np.stack([np.asarray(mlp_apply(params, sequences[:, t])) for t in range(5)], axis=1)
    np.testing.assert_allclose(model.predict(sequences, verbose=0), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.needs_training
def test_time_distributed_jax_layer_trains():
    sequences = np.random.RandomState(3).rand(16, 5, 4).astype("float32")
    targets = np.random.RandomState(4).rand(16, 5, 3).astype("float32")
    layer = JaxLayer(mlp_call, params=_params())
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.TimeDistributed(layer)])
    model.compile(keras.optimizers.Adam(0.02), "mse")
    before = jax.tree.map(np.asarray, layer.get_params())
    history = model.fit(sequences, targets, epochs=5, batch_size=8, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = jax.tree.map(np.asarray, layer.get_params())
    assert not np.allclose(after["dense"]["kernel"], before["dense"]["kernel"])


def _summary_counts(model):
    lines = []
    model.summary(expand_nested=True, print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    counts = {}
    for key in ("Total", "Trainable", "Non-trainable"):
        match = re.search(rf"^\s*{key} params: ([\d,]+)", text, re.MULTILINE)
        assert match, text
        counts[key] = int(match.group(1).replace(",", ""))
    return counts, text


def test_summary_expand_nested_counts_equal_the_layers_variables():
    layer = JaxLayer(stateful_call, params=_params(), state=_state(), name="wrapped")
    inner = keras.Sequential([keras.Input((4,)), layer], name="inner")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    freeze_by_pattern(layer, r"out\.bias")  # a frozen parameter counts as non-trainable

    def size(variables):
        return sum(int(np.prod(v.shape)) for v in variables)

    counts, text = _summary_counts(model)
    assert size(layer.trainable_variables) == 4 * 8 + 8 + 8 * 3
    assert size(layer.non_trainable_variables) == 3 + 4 + 1
    assert counts["Trainable"] == size(layer.trainable_variables) + 3 * 2 + 2
    assert counts["Non-trainable"] == size(layer.non_trainable_variables)
    assert counts["Total"] == size(layer.variables) + 3 * 2 + 2
    # The nested layer's own row shows all its parameters.
    row = next(line for line in text.splitlines() if "wrapped" in line)
    assert re.search(rf"\b{size(layer.variables)}\b", row), row


# -------------------------------------------------------- keras.ops on outputs


def _ops_model():
    params = _params()
    inputs = keras.Input((4,))
    logits = JaxLayer(mlp_call, params=params, name="wrapped")(inputs)
    side = keras.layers.Dense(2, kernel_initializer="ones", name="side")(inputs)
    probabilities = keras.ops.softmax(logits, axis=-1)
    outputs = keras.ops.concatenate([probabilities[:, :2], keras.ops.tanh(side)], axis=-1)
    return keras.Model(inputs, outputs), params


def test_keras_ops_on_the_layer_outputs_in_a_functional_model():
    model, params = _ops_model()
    logits = np.asarray(mlp_apply(params, X))
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = np.concatenate([softmax[:, :2], np.tanh(X @ np.ones((4, 2), "float32"))], axis=-1)
    np.testing.assert_allclose(model.predict(X, verbose=0), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.needs_training
def test_functional_model_with_keras_ops_trains():
    model, _ = _ops_model()
    model.compile(keras.optimizers.Adam(0.05), "mse")
    before = _weights(model)
    targets = np.random.RandomState(5).rand(32, 4).astype("float32")
    history = model.fit(X, targets, epochs=5, batch_size=8, verbose=0, shuffle=False)
    after = _weights(model)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(not np.array_equal(after[p], before[p]) for p in before)


# --------------------------------------------------------- compile options


def _trained_with(**compile_kwargs):
    model = _model(JaxLayer(stateful_call, params=_params(), state=_state()), **compile_kwargs)
    _fit(model, epochs=1)
    assert int(model.layers[0].get_state()["steps"]) == 4
    return _weights(model)


@functools.cache
def _trained_with_the_default_compile():
    return _trained_with()


@pytest.mark.needs_training
@pytest.mark.parametrize(
    "compile_kwargs", [{"jit_compile": False}, {"steps_per_execution": 3}], ids=["no_jit", "steps_per_execution_3"]
)
def test_compile_options_give_the_default_weights(compile_kwargs):
    if BACKEND == "torch" and "steps_per_execution" in compile_kwargs:
        # Keras refuses it on torch for every model, before any layer runs.
        with pytest.raises(ValueError, match="steps_per_execution` must be 1 with the PyTorch backend"):
            _trained_with(**compile_kwargs)
        return
    _assert_same_weights(_trained_with(**compile_kwargs), _trained_with_the_default_compile(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------ backend datasets


def _dataset(kind, with_targets):
    if kind == "tf_data":
        import tensorflow as tf

        tensors = (X, Y) if with_targets else X
        return tf.data.Dataset.from_tensor_slices(tensors).batch(8)
    import torch

    tensors = (torch.from_numpy(X), torch.from_numpy(Y)) if with_targets else (torch.from_numpy(X),)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=8)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("tf_data", marks=pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.data: tensorflow backend")),
        pytest.param("torch_loader", marks=pytest.mark.skipif(BACKEND != "torch", reason="DataLoader: torch backend")),
    ],
)
def test_evaluate_and_predict_on_the_backend_dataset_equal_numpy_arrays(kind):
    model = _model(JaxLayer(stateful_call, params=_params(), state=_state()), optimizer=None)
    model.compile(keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    expected_predictions = model.predict(X, batch_size=8, verbose=0)
    expected_metrics = model.evaluate(X, Y, batch_size=8, verbose=0)
    predictions = model.predict(_dataset(kind, with_targets=False), verbose=0)
    metrics = model.evaluate(_dataset(kind, with_targets=True), verbose=0)
    np.testing.assert_allclose(predictions, expected_predictions, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(metrics, expected_metrics, rtol=1e-6)
    # Inference: the running mean was neither used as updated nor written.
    assert int(model.layers[0].get_state()["steps"]) == 0
