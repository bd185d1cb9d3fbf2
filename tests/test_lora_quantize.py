"""LoRA (`enable_lora`, `merge_lora`, adapter files) and int8 (`quantize`) (SPEC B12).

Every adapter (plain JaxLayer, Flax Linen, Haiku, NNX, Equinox) on the
digits: outputs unchanged at `enable_lora`, only the adapters and what is
left trainable move under `fit`, a `.keras` reload keeps A and B and
training goes on, `merge_lora` keeps the outputs; `model.quantize("int8")`
agrees with the float model, reloads equal, and QLoRA trains the adapters
on the frozen int8 base. Runs on every backend (training parts not on numpy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND
from digits import load_digits_data
from jaxlayer import EquinoxLayer, FlaxLayer, HaikuLayer, JaxLayer, NnxLayer
from saving_models import saved_call, saved_init

TESTS = Path(__file__).parent
X, Y = load_digits_data()
XTRAIN, YTRAIN, XTEST = X[:1024], Y[:1024], X[1500:]


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def values(layer):
    return {v.name: numpy(v) for v in layer.weights}


# ------------------------------------------------------------------ models: 64 -> 32 -> 10


def plain_layer():
    def init(rng, inputs):
        k1, k2 = jax.random.split(rng)
        return {
            "hidden": {"kernel": jax.random.normal(k1, (64, 32)) * 0.2, "bias": jnp.zeros(32)},
            "head": {"kernel": jax.random.normal(k2, (32, 10)) * 0.2, "bias": jnp.zeros(10)},
        }

    def call(params, inputs):
        h = jax.nn.relu(inputs @ params["hidden"]["kernel"] + params["hidden"]["bias"])
        return h @ params["head"]["kernel"] + params["head"]["bias"]

    return JaxLayer(call, init), "hidden.kernel"


def flax_layer():
    nn = pytest.importorskip("flax.linen")

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10, name="head")(nn.relu(nn.Dense(32, name="hidden")(x)))

    return FlaxLayer(Mlp()), "params.hidden.kernel"


def haiku_layer():
    hk = pytest.importorskip("haiku")

    def forward(x):
        return hk.Linear(10, name="head")(jax.nn.relu(hk.Linear(32, name="hidden")(x)))

    return HaikuLayer(hk.transform(forward)), "hidden.w"


def nnx_layer():
    nnx = pytest.importorskip("flax.nnx")

    class Mlp(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(64, 32, rngs=rngs)
            self.head = nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.hidden(x)))

    return NnxLayer(Mlp(nnx.Rngs(0))), "hidden.kernel"


def equinox_layer():
    eqx = pytest.importorskip("equinox")
    k1, k2 = jax.random.split(jax.random.key(0))
    model = eqx.nn.Sequential([eqx.nn.Linear(64, 32, key=k1), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Linear(32, 10, key=k2)])
    return EquinoxLayer(model), "layers.0.weight"


ADAPTERS = {
    "jaxlayer": plain_layer,
    "flax": flax_layer,
    "haiku": haiku_layer,
    "nnx": nnx_layer,
    "equinox": equinox_layer,
}


def digits_model(layer, lr=1e-2):
    model = keras.Sequential([keras.Input((64,)), layer])
    compile_model(model, lr)
    return model


def compile_model(model, lr=1e-2):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def fit(model, epochs=2):
    return model.fit(XTRAIN, YTRAIN, epochs=epochs, batch_size=64, verbose=0, shuffle=False).history["loss"]


# ------------------------------------------------------------------ LoRA, every adapter


@pytest.mark.needs_training
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_adapted_dense_kernels_run_in_low_rank(adapter, monkeypatch):
    """`x @ W + (x @ A) @ B` for every adapter's Dense kernels (`_low_rank`),
    with the merged kernel's outputs and training."""
    if BACKEND != "jax":
        pytest.skip("a pure JAX rewrite, the same program on every backend: checked on jax")
    from jaxlayer import _low_rank

    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(_low_rank, "ENABLED", enabled)
        keras.utils.set_random_seed(0)
        layer, _ = ADAPTERS[adapter]()
        model = keras.Sequential([keras.Input((64,)), layer])
        layer.enable_lora(4)
        for variable in layer.weights:
            if variable.name.endswith("lora_b"):
                variable.assign(np.full(variable.shape, 0.05, "float32"))
        dots, fallbacks = _low_rank.LOW_RANK_DOTS, _low_rank.FALLBACKS
        outputs = numpy(model(XTEST))
        model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(XTRAIN[:256], YTRAIN[:256], epochs=1, batch_size=64, verbose=0, shuffle=False)
        results[enabled] = (outputs, values(layer))
        assert _low_rank.FALLBACKS == fallbacks
        # Both kernels (hidden and head) in the eager call and the train step.
        assert (_low_rank.LOW_RANK_DOTS - dots >= 4) == enabled
    (low, low_values), (merged, merged_values) = results[True], results[False]
    np.testing.assert_allclose(low, merged, rtol=1e-5, atol=1e-5)
    for name, value in merged_values.items():
        np.testing.assert_allclose(low_values[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.needs_training
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_lora_trains_only_adapters_reloads_and_merges(adapter, tmp_path):
    layer, hidden = ADAPTERS[adapter]()
    model = digits_model(layer)
    fit(model, epochs=1)  # a "pretrained" base
    before = numpy(model(XTEST))
    layer.enable_lora(4, target=hidden.replace(".", r"\."))
    assert layer.lora_rank == 4
    # The layout's fans: (in, out) kernels give A (64, 4), B (4, 32); Equinox's (out, in) too.
    shapes = {v.name: tuple(v.shape) for v in layer.weights}
    assert shapes[f"{hidden}.lora_a"] == (64, 4) and shapes[f"{hidden}.lora_b"] == (4, 32)
    np.testing.assert_array_equal(numpy(model(XTEST)), before)  # B is zero

    compile_model(model)
    start = values(layer)
    fit(model, epochs=1)
    moved = {name for name, value in values(layer).items() if not np.array_equal(value, start[name])}
    trainable = {v.name for v in layer.trainable_weights}
    assert hidden not in trainable and f"{hidden}.lora_b" in trainable
    assert moved == trainable, (moved, trainable)  # the frozen kernel did not move

    path = tmp_path / "lora.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    again = reloaded.layers[0]
    outputs = numpy(model(XTEST))
    # Float rounding only: a portable reload runs the adapted kernels merged.
    np.testing.assert_allclose(numpy(reloaded(XTEST)), outputs, atol=1e-5)
    assert again.lora_rank == 4
    for name, value in values(layer).items():
        np.testing.assert_array_equal(values(again)[name], value)  # A and B unmerged
    compile_model(reloaded)
    saved_b = values(again)[f"{hidden}.lora_b"]
    fit(reloaded, epochs=1)
    assert not np.array_equal(values(again)[f"{hidden}.lora_b"], saved_b)  # training goes on
    assert np.array_equal(values(again)[hidden], values(layer)[hidden])

    layer.merge_lora()
    assert layer.lora_rank is None
    assert not any(".lora_" in v.name for v in layer.weights)
    assert hidden in {v.name for v in layer.trainable_weights}
    np.testing.assert_allclose(numpy(model(XTEST)), outputs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ int8 and QLoRA, every adapter


@pytest.mark.needs_training
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_int8_agrees_reloads_and_qlora_trains(adapter, tmp_path):
    layer, hidden = ADAPTERS[adapter]()
    model = digits_model(layer)
    fit(model, epochs=3)
    float_logits = numpy(model(XTEST))
    model.quantize("int8")
    assert layer.quantization_mode == "int8"
    dtypes = {v.name: keras.backend.standardize_dtype(v.dtype) for v in layer.weights}
    assert dtypes[hidden] == "int8" and dtypes[f"{hidden}.scale"] == "float32"
    int8_logits = numpy(model(XTEST))
    agreement = np.mean(int8_logits.argmax(-1) == float_logits.argmax(-1))
    assert agreement >= 0.95, agreement

    path = tmp_path / "int8.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.layers[0].quantization_mode == "int8"
    np.testing.assert_array_equal(numpy(reloaded(XTEST)), int8_logits)

    layer.enable_lora(4)  # QLoRA: adapters on every int8 kernel
    compile_model(model, lr=3e-3)
    base = values(layer)
    losses = fit(model, epochs=2)
    assert losses[-1] < losses[0]
    after = values(layer)
    for name, value in base.items():
        if dtypes.get(name) == "int8" or name.endswith(".scale"):
            np.testing.assert_array_equal(after[name], value)
    assert not np.array_equal(after[f"{hidden}.lora_b"], base[f"{hidden}.lora_b"])


# ------------------------------------------------------------------ selection, errors, files (plain layer)


def built_plain():
    layer, _ = plain_layer()
    layer(XTEST[:2])
    return layer


def test_target_selects_kernels_and_freeze_others():
    layer = built_plain()
    layer.enable_lora(2, target="head", lora_alpha=4.0)
    names = {v.name for v in layer.weights}
    assert {"head.kernel.lora_a", "head.kernel.lora_b"} <= names
    assert "head.bias.lora_a" not in names and "hidden.kernel.lora_a" not in names
    assert {v.name for v in layer.trainable_weights} == {
        "hidden.kernel", "hidden.bias", "head.bias", "head.kernel.lora_a", "head.kernel.lora_b"
    }
    layer.merge_lora()
    layer.enable_lora(2, target="head", freeze_others=True)
    assert {v.name for v in layer.trainable_weights} == {"head.kernel.lora_a", "head.kernel.lora_b"}
    layer.merge_lora()
    assert len(layer.trainable_weights) == 4  # trainability restored


@pytest.mark.needs_training
def test_trainability_changed_after_enable_lora_is_followed():
    """keras-hub's recipe: the adapted layers' biases trained beside A and B."""
    layer, hidden = plain_layer()
    model = digits_model(layer)
    layer.enable_lora(4, target="kernel", freeze_others=True)
    bias = next(v for v in layer.weights if v.name == "hidden.bias")
    assert not bias.trainable
    bias.trainable = True
    compile_model(model)  # as after any change of trainability
    before = values(layer)
    fit(model, epochs=1)
    after = values(layer)
    assert not np.array_equal(after["hidden.bias"], before["hidden.bias"])  # on tensorflow too
    assert not np.array_equal(after[f"{hidden}.lora_b"], before[f"{hidden}.lora_b"])
    np.testing.assert_array_equal(after[hidden], before[hidden])  # the kernel stays frozen
    np.testing.assert_array_equal(after["head.bias"], before["head.bias"])


def test_lora_formula_and_get_params_merged():
    layer = built_plain()
    layer.enable_lora(2, lora_alpha=6.0, target="head")
    a = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    b = np.random.default_rng(1).normal(size=(2, 10)).astype("float32")
    variables = {v.name: v for v in layer.weights}
    variables["head.kernel.lora_a"].assign(a)
    variables["head.kernel.lora_b"].assign(b)
    kernel = numpy(variables["head.kernel"])
    merged = np.asarray(layer.get_params()["head"]["kernel"])
    np.testing.assert_allclose(merged, kernel + 3.0 * a @ b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="merge_lora"):
        layer.set_params(layer.get_params())


def test_lora_errors_change_nothing():
    layer, _ = plain_layer()
    with pytest.raises(ValueError, match="before it was built"):
        layer.enable_lora(4)
    layer(XTEST[:2])
    names = [v.name for v in layer.weights]
    with pytest.raises(ValueError, match="integer >= 1"):
        layer.enable_lora(0)
    with pytest.raises(ValueError, match=r"Names that can be targeted: \['head.kernel', 'hidden.kernel'\]"):
        layer.enable_lora(2, target="bias")
    with pytest.raises(ValueError, match="not a valid regex"):
        layer.enable_lora(2, target="(")
    assert [v.name for v in layer.weights] == names and layer.lora_rank is None
    with pytest.raises(ValueError, match="no LoRA enabled"):
        layer.merge_lora()
    layer.enable_lora(2)
    with pytest.raises(ValueError, match="already enabled"):
        layer.enable_lora(2)
    with pytest.raises(ValueError, match="Quantize first"):
        layer.quantize("int8")
    with pytest.raises(ValueError, match="load_checkpoint"):
        layer.load_checkpoint({"hidden": {"kernel": np.zeros((64, 32))}}, strict=False)


def test_quantize_modes_and_keras_warning():
    layer = built_plain()
    with pytest.raises(NotImplementedError, match="'int8'"):
        layer.quantize("float8")
    model = keras.Sequential([keras.Input((64,)), layer])
    with pytest.warns(UserWarning, match="implements are 'int8'"):
        model.quantize("int4")
    assert layer.quantization_mode is None and len(layer.weights) == 4
    layer.quantize("int8", target="head")
    assert {v.name: keras.backend.standardize_dtype(v.dtype) for v in layer.weights}["hidden.kernel"] == "float32"
    with pytest.raises(ValueError, match="already quantized"):
        layer.quantize("int8")


def test_adapter_files_and_rank_mismatch(tmp_path):
    layer = built_plain()
    base = jax.tree.map(np.asarray, layer.get_params())
    layer.enable_lora(4, target="hidden")
    for variable in layer.weights:
        if ".lora_" in variable.name:
            variable.assign(np.full(variable.shape, 0.01, "float32"))
    path = tmp_path / "adapters.lora.h5"
    layer.save_lora_weights(path)
    expected = numpy(layer(XTEST))

    fresh = built_plain()
    fresh.set_params(base)  # the same base
    fresh.load_lora_weights(path)  # enables the file's rank and target first
    assert fresh.lora_rank == 4
    np.testing.assert_allclose(numpy(fresh(XTEST)), expected, rtol=1e-5, atol=1e-5)

    other = built_plain()
    other.enable_lora(2, target="hidden")
    with pytest.raises(ValueError, match="rank-4 adapters"):
        other.load_lora_weights(path)
    other.merge_lora()
    other.enable_lora(4, target="head")
    with pytest.raises(ValueError, match="do not match"):
        other.load_lora_weights(path)
    with pytest.raises(ValueError, match=r"\.lora\.h5"):
        layer.save_lora_weights(tmp_path / "adapters.h5")


def test_source_save_records_lora_and_int8(tmp_path):
    layer = JaxLayer(saved_call, saved_init)
    model = keras.Sequential([keras.Input((64,)), layer])
    layer.quantize("int8", target="dense")
    layer.enable_lora(2, lora_alpha=1.0)
    config = layer.get_config()
    assert "portable" not in config
    assert (config["lora_rank"], config["lora_alpha"], config["quantization_target"]) == (2, 1.0, "dense")
    for variable in layer.weights:
        if variable.name.endswith("lora_b"):
            variable.assign(np.full(variable.shape, 0.1, "float32"))
    model.save(tmp_path / "source.keras")
    reloaded = keras.models.load_model(tmp_path / "source.keras")
    np.testing.assert_array_equal(numpy(reloaded(XTEST)), numpy(model(XTEST)))
    assert [v.name for v in reloaded.weights] == [v.name for v in model.weights]


@pytest.mark.needs_training
def test_mixed_precision_keeps_adapters_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer, _ = plain_layer()
        model = digits_model(layer)
        layer.quantize("int8", target="head")
        layer.enable_lora(4)
        compile_model(model)
        losses = fit(model, epochs=1)
        assert np.isfinite(losses).all()
        dtypes = {v.name: keras.backend.standardize_dtype(v.dtype) for v in layer.weights}
        assert dtypes["hidden.kernel.lora_a"] == dtypes["head.kernel.lora_b"] == "float32"
        assert keras.backend.standardize_dtype(model(XTEST[:4]).dtype) == "bfloat16"
    finally:
        keras.config.set_dtype_policy("float32")


# ------------------------------------------------------------------ portable, without the framework


@pytest.mark.skipif(BACKEND != "jax", reason="one backend proves the portable form; the others run it above")
def test_portable_lora_and_int8_load_without_framework(tmp_path):
    flax, _ = flax_layer()
    float_model = digits_model(flax)
    fit(float_model, epochs=2)
    flax.quantize("int8")
    flax.enable_lora(4, target="hidden")
    for variable in flax.weights:
        if variable.name.endswith("lora_b"):
            variable.assign(np.full(variable.shape, 0.05, "float32"))
    compile_model(float_model)  # as after any change of trainability
    float_model.save(tmp_path / "qlora.keras")
    assert "portable" in flax.get_config()
    np.save(tmp_path / "expected.npy", numpy(float_model(XTEST)))
    np.save(tmp_path / "x.npy", XTRAIN[:256])
    np.save(tmp_path / "y.npy", YTRAIN[:256])
    np.save(tmp_path / "xtest.npy", XTEST)
    python = os.environ.get("JAXLAYER_MIN_PYTHON") or sys.executable
    result = subprocess.run(
        [python, str(TESTS / "lora_portable_check.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=dict(os.environ, KERAS_BACKEND="jax"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"] == "FlaxLayer" and report["portable"], report
    assert report["quantization_mode"] == "int8" and report["lora_rank"] == 4, report
    # Float rounding only: in this process the adapted Dense kernels run in
    # low rank (`_low_rank`), in the saved programs as merged kernels.
    assert report["max_diff"] <= 1e-5, report
    assert report["loss_fell"] and report["adapters_moved"] and report["int8_unchanged"], report
    assert report["frameworks_loaded"] == [], report
