"""`model.export(path, format=...)` for models holding a JaxLayer.

Each artefact that can be written is run (onnxruntime, `tf.saved_model.load`,
`tf.lite.Interpreter`) and compared with the model's own predictions, on a
batch size the model was not called with. Where a format cannot hold a JAX
program (ONNX on the tensorflow and torch backends, torch.export), the user
gets a ValueError that names the format and the backend and points to the
jax backend. Every check runs on three models: one with a registered
`call_fn`, one with a closure (and state), and the closure model after a
portable `.keras` save and `load_model` (a `PortableLayer`).
"""

from __future__ import annotations

import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer, PortableLayer

FEATURES, UNITS = 8, 3
KINDS = ("registered", "closure", "loaded")


def _only_on(*backends):
    return pytest.mark.skipif(
        BACKEND not in backends,
        reason=f"this export runs on the {' / '.join(backends)} backend; active: {BACKEND}",
    )


@keras.saving.register_keras_serializable(package="test_export_formats")
def registered_call(params, inputs):
    return jnp.tanh(inputs @ params["w"] + params["b"])


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(FEATURES, UNITS)).astype("float32"),
        "b": rng.normal(size=(UNITS,)).astype("float32"),
    }


def _closure_layer():
    scale = 0.5  # a closure: saved portably, as jax.export programs

    def call_fn(params, state, inputs, training):
        if training:
            state = {"mean": 0.9 * state["mean"] + 0.1 * inputs.mean(0)}
        hidden = jnp.tanh((inputs - state["mean"]) @ params["w"] + params["b"])
        return hidden * scale, state

    state = {"mean": np.linspace(-0.5, 0.5, FEATURES).astype("float32")}
    return JaxLayer(call_fn, params=_params(1), state=state)


def _model(kind, tmp_path):
    """A built model that has been called once eagerly (the jax ONNX export needs it)."""
    if kind == "registered":
        layer = JaxLayer(registered_call, params=_params(0))
    else:
        layer = _closure_layer()
    model = keras.Sequential([keras.Input((FEATURES,)), layer])
    if kind == "loaded":
        path = str(tmp_path / "model.keras")
        model.save(path)
        model = keras.models.load_model(path)
        assert isinstance(model.layers[0], PortableLayer)
    model(np.zeros((2, FEATURES), "float32"))
    return model


def _data_and_expected(model):
    x = np.random.default_rng(7).normal(size=(5, FEATURES)).astype("float32")
    return x, to_numpy(model.predict(x, verbose=0))


def _assert_points_to_jax(message, backend):
    assert "ONNX" in message
    assert f"on the {backend} backend" in message
    assert "KERAS_BACKEND=jax" in message and ".keras" in message
    assert "Received: format=onnx" in message


# ------------------------------------------------------------- jax: ONNX


@_only_on("jax")
@pytest.mark.parametrize("kind", ["registered", "closure"])
def test_onnx_on_jax_runs_in_onnxruntime(kind, tmp_path):
    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _model(kind, tmp_path)
    x, expected = _data_and_expected(model)
    path = str(tmp_path / "model.onnx")
    model.export(path, format="onnx", verbose=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(actual, expected, atol=1e-5)


@_only_on("jax")
def test_onnx_on_jax_of_a_loaded_portable_model_says_to_use_the_source(tmp_path):
    pytest.importorskip("jax2onnx")
    model = _model("loaded", tmp_path)
    with pytest.raises(ValueError, match="Received: format=onnx") as error:
        model.export(str(tmp_path / "model.onnx"), format="onnx", verbose=False)
    message = str(error.value)
    assert "ONNX" in message and "source code" in message


# ------------------------------------------------------- tf_saved_model


@_only_on("jax", "tensorflow")
@pytest.mark.parametrize("kind", KINDS)
def test_tf_saved_model_serves_the_same_numbers(kind, tmp_path):
    tf = pytest.importorskip("tensorflow")
    model = _model(kind, tmp_path)
    x, expected = _data_and_expected(model)
    path = str(tmp_path / "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(path)  # kept: `serve` needs its variables alive
    actual = reloaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-5)


# ------------------------------------------------------- tensorflow: LiteRT


@_only_on("tensorflow")
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
@pytest.mark.parametrize("kind", KINDS)
def test_litert_on_tensorflow_runs_in_the_tflite_interpreter(kind, tmp_path):
    import tensorflow as tf

    model = _model(kind, tmp_path)
    x, expected = _data_and_expected(model)
    path = str(tmp_path / "model.tflite")
    model.export(path, format="litert", verbose=False)
    interpreter = tf.lite.Interpreter(model_path=path)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    actual = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(actual, expected, atol=1e-5)


# -------------------------------------------- ONNX where it cannot work


@_only_on("tensorflow")
@pytest.mark.parametrize("kind", ["closure", "loaded"])
def test_onnx_on_tensorflow_is_a_clear_error(kind, tmp_path):
    model = _model(kind, tmp_path)
    path = tmp_path / "model.onnx"
    # Raised while Keras traces the model, before tf2onnx is imported.
    with pytest.raises(ValueError, match="cannot be exported to ONNX") as error:
        model.export(str(path), format="onnx", verbose=False)
    _assert_points_to_jax(str(error.value), "tensorflow")
    assert "XlaCallModule" in str(error.value)
    assert not path.exists()
    # The same model still exports as a SavedModel afterwards.
    model.export(str(tmp_path / "saved_model"), format="tf_saved_model", verbose=False)


@_only_on("torch")
@pytest.mark.parametrize("kind", ["closure", "loaded"])
@pytest.mark.parametrize("grad", ["grad", "no_grad"])
def test_onnx_on_torch_is_a_clear_error(kind, grad, tmp_path):
    import torch

    model = _model(kind, tmp_path)
    path = tmp_path / "model.onnx"
    # With and without gradients the bridge takes different paths (the
    # autograd.Function or the plain compiled program); both must say why.
    with torch.set_grad_enabled(grad == "grad"):
        with pytest.raises(ValueError, match="cannot be exported to ONNX") as error:
            model.export(str(path), format="onnx", verbose=False)
    _assert_points_to_jax(str(error.value), "torch")
    assert not path.exists()


@_only_on("torch")
def test_torch_export_is_a_clear_error(tmp_path):
    model = _model("closure", tmp_path)
    # Keras wraps torch.export failures in a RuntimeError quoting the error.
    with pytest.raises(
        (RuntimeError, ValueError), match="cannot be traced by torch.export"
    ) as error:
        model.export(str(tmp_path / "model.pt2"), format="torch", verbose=False)
    assert "Received: format=torch" in str(error.value)
    assert "jax backend" in str(error.value)
