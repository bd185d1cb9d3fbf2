"""B6: portable saving. Models whose code is not registered save as `jax.export`
programs and load, predict, train and save again in a fresh process that
cannot import their framework or their code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from portable_models import BUILDERS, data

TESTS = Path(__file__).parent
FRAMEWORK = {"haiku_seed_style": "haiku", "haiku_layer": "haiku", "flax_linen": "flax",
             "flax_nnx": "flax", "equinox_mlp": "equinox"}
ORIGINAL_CLASS = {"plain_closure": "JaxLayer", "haiku_seed_style": "JaxLayer", "haiku_layer": "HaikuLayer",
                  "flax_linen": "FlaxLayer", "flax_nnx": "NnxLayer", "equinox_mlp": "EquinoxLayer"}

# Saving is the same on every backend (jax.export of the pure function); what
# the backend changes is loading, predicting and training the PortableLayer.
# The jax process saves every model; the others save three that cover the
# layer's paths (plain closure with state and dropout, NNX, Equinox
# without state).
NAMES = list(BUILDERS) if BACKEND == "jax" else ["plain_closure", "flax_nnx", "equinox_mlp"]


def _available(name):
    module = FRAMEWORK.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def fresh_process_results(tmp_path_factory):
    """Saves every model here, then checks them all in one fresh process."""
    root = tmp_path_factory.mktemp("portable")
    x, y = data()
    manifest, saved = [], {}
    for name in NAMES:
        build = BUILDERS[name]
        if not _available(name):
            continue
        keras.backend.clear_session()
        model, has_state, has_dropout = build()
        if BACKEND != "numpy":
            model.layers[0](x[:16], training=True)  # move the state away from its initial value
        expected = to_numpy(model.predict(x, verbose=0, batch_size=len(x)))
        path = root / f"{name}.keras"
        model.save(path)
        np.save(root / f"{name}.expected.npy", expected)
        manifest.append({"name": name, "path": str(path), "x": str(root / "x.npy"), "y": str(root / "y.npy"),
                         "expected": str(root / f"{name}.expected.npy")})
        saved[name] = {"has_state": has_state, "has_dropout": has_dropout,
                       "weight_names": sorted(v.name for v in model.weights), "path": path}
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    (root / "manifest.json").write_text(json.dumps(manifest))
    results, modules = _check_in_fresh_process(sys.executable, root / "manifest.json")
    return saved, results, modules, root / "manifest.json"


def _check_in_fresh_process(python, manifest):
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    result = subprocess.run([str(python), str(TESTS / "portable_check.py"), str(manifest)],
                            capture_output=True, text=True, env=env, timeout=900, cwd=manifest.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    results = {r["name"]: r for r in lines if "name" in r}
    modules = next(r["modules"] for r in lines if "modules" in r)
    return results, modules


def _saved_and_result(name, fresh_process_results):
    """What the saving process recorded for `name`, and the fresh process's result."""
    saved, results, _, _ = fresh_process_results
    if name not in saved:
        pytest.skip(f"{FRAMEWORK[name]} is not installed")
    return saved[name], results[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_portable_model_loads_and_predicts_without_its_code(name, fresh_process_results):
    info, r = _saved_and_result(name, fresh_process_results)
    assert r["portable"] and r["class"] == ORIGINAL_CLASS[name]
    assert r["identical"], f"predictions differ by {r['max_diff']}"
    assert r["batch_sizes_ok"]
    assert r["weight_names"] == info["weight_names"]
    assert r["set_params_changes_outputs"] and r["set_params_restores"]
    assert r["resave_identical"]


@pytest.mark.slow
@pytest.mark.needs_training
@pytest.mark.parametrize("name", NAMES)
def test_portable_model_trains_without_its_code(name, fresh_process_results):
    info, r = _saved_and_result(name, fresh_process_results)
    assert r["loss_fell"], r["losses"]
    assert r["weights_changed"]
    if info["has_dropout"]:
        assert r["training_calls_differ"]
    if info["has_state"]:
        assert r["state_changed"], "fit did not update the state"
    if name == "plain_closure":  # a float running mean and an integer step counter
        assert sorted(r["state_changed"]) == ["float32", "int32"]


@pytest.mark.slow
def test_fresh_process_imported_no_framework(fresh_process_results):
    _, _, modules, _ = fresh_process_results
    # (Keras's own saving code imports tensorflow whenever it is installed,
    # so only the frameworks are checked here; tests/minimal_env loads a
    # portable file where nothing but keras and jax is installed.)
    assert not {"haiku", "flax", "equinox"} & set(modules)


@pytest.mark.slow
def test_portable_models_load_and_train_where_only_keras_and_jax_are_installed(fresh_process_results):
    """`make test` points JAXLAYER_MIN_PYTHON at `.venv-min` (keras, jax, pytest only)."""
    python = os.environ.get("JAXLAYER_MIN_PYTHON")
    if BACKEND != "jax" or not python:
        pytest.skip("runs on the jax backend with JAXLAYER_MIN_PYTHON set (make test sets it)")
    saved, _, _, manifest = fresh_process_results
    check = subprocess.run([python, "-c", "import haiku"], capture_output=True)
    assert check.returncode != 0, "JAXLAYER_MIN_PYTHON is not a minimal environment"
    results, modules = _check_in_fresh_process(python, manifest)
    assert sorted(results) == sorted(saved)
    for name, r in results.items():
        assert r["identical"] and r["batch_sizes_ok"] and r["resave_identical"], (name, r)
        assert r["loss_fell"] and r["weights_changed"], (name, r)
        if saved[name]["has_state"]:
            assert r["state_changed"], name
    assert modules == []


def test_archive_holds_programs_and_the_config_no_code(tmp_path):
    model, _, _ = BUILDERS["plain_closure"]()
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        names = archive.namelist()
        config = json.loads(archive.read("config.json"))
    programs = sorted(n.rsplit("/", 1)[1] for n in names if n.endswith(".jaxexport"))
    assert programs == sorted(f"{p}.{f}.jaxexport" for p in ("forward", "forward_vjp", "backward")
                              for f in ("inference", "training"))
    layer_config = config["config"]["layers"][1]["config"]
    portable = layer_config["portable"]
    assert portable["platforms"][:2] == ["cpu", "cuda"]
    assert portable["jax_version"] and portable["calling_convention_version"]
    assert "call_fn" not in layer_config and "pickle" not in json.dumps(config)


def test_weights_are_arguments_not_constants(tmp_path):
    """The programs stay small however big the weights are."""
    from jaxlayer import JaxLayer

    big = {"w": np.ones((512, 512), "float32")}
    model = keras.Sequential([keras.Input((512,)), JaxLayer(lambda params, inputs: inputs @ params["w"], params=big)])
    model.save(tmp_path / "big.keras")
    with zipfile.ZipFile(tmp_path / "big.keras") as archive:
        program_bytes = sum(i.file_size for i in archive.infolist() if i.filename.endswith(".jaxexport"))
    assert program_bytes < 512 * 512 * 4 / 4, program_bytes


def test_save_as_portable_even_when_registered(tmp_path):
    from jaxlayer import JaxLayer, PortableLayer
    from saving_models import saved_call, saved_init

    x = np.ones((2, 4), "float32")
    layer = JaxLayer(saved_call, saved_init, save_as="portable")
    model = keras.Sequential([keras.Input((4,)), layer])
    model.save(tmp_path / "serve.keras")
    loaded = keras.models.load_model(tmp_path / "serve.keras")
    assert isinstance(loaded.layers[0], PortableLayer)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


def test_save_as_source_refuses_unregistered_functions(tmp_path):
    from jaxlayer import JaxLayer

    layer = JaxLayer(lambda params, inputs: inputs @ params["w"], params={"w": np.ones((4, 2), "float32")},
                     save_as="source")
    model = keras.Sequential([keras.Input((4,)), layer])
    with pytest.raises(ValueError, match=r"`call_fn` \(.*lambda.*\) is not registered.*save_as=\"portable\""):
        model.save(tmp_path / "bad.keras")


def test_bad_save_as_is_refused():
    from jaxlayer import JaxLayer

    with pytest.raises(ValueError, match=r"`save_as` must be one of 'auto', 'portable', 'source'.*Received: save_as='onnx'"):
        JaxLayer(lambda inputs: inputs, save_as="onnx")


def test_layer_never_called_cannot_be_saved_portably(tmp_path):
    from jaxlayer import JaxLayer

    layer = JaxLayer(lambda params, inputs: inputs @ params["w"], params={"w": np.ones((4, 2), "float32")})
    with pytest.raises(ValueError, match="before it has been called.*Call the layer"):
        layer.get_config()


def test_host_callback_fails_at_save_with_both_fixes(tmp_path):
    import jax

    from jaxlayer import JaxLayer

    def call_fn(params, inputs):
        y = inputs @ params["w"]
        return jax.pure_callback(lambda a: a, jax.ShapeDtypeStruct(y.shape, y.dtype), y)

    model = keras.Sequential([keras.Input((4,)), JaxLayer(call_fn, params={"w": np.ones((4, 2), "float32")})])
    with pytest.raises(ValueError, match=r"(?s)host callbacks.*register_keras_serializable.*save_weights.*new path"):
        model.save(tmp_path / "cb.keras")


def test_clone_model_of_a_loaded_portable_model(tmp_path):
    model, _, _ = BUILDERS["plain_closure"]()
    x, _ = data(6)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    clone = keras.models.clone_model(loaded)
    clone.set_weights(loaded.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(loaded(x)))


def test_jax_version_outside_the_window_is_a_clear_error():
    from jaxlayer._portable_programs import check_versions

    metadata = {"format_version": 1, "jax_version": "0.4.1", "calling_convention_version": 3}
    with pytest.raises(ValueError, match=r"saved with jax 0\.4\.1 \(calling convention 3\); this is jax .* too old for it"):
        check_versions(metadata)


def test_unknown_dimensions_stay_symbolic(tmp_path):
    """Built with an unknown sequence length: the program takes any length."""
    import jax.numpy as jnp

    from jaxlayer import JaxLayer

    def call_fn(params, inputs):  # (batch, time, 4) -> (batch, 4): mean over time
        return jnp.tanh(inputs @ params["w"]).mean(axis=1)

    model = keras.Sequential([keras.Input((None, 4)), JaxLayer(call_fn, params={"w": np.eye(4, dtype="float32")})])
    model.save(tmp_path / "seq.keras")
    loaded = keras.models.load_model(tmp_path / "seq.keras")
    assert loaded.layers[0]._exported.describe_inputs() == "float32[?, ?, 4]"
    for batch, steps in ((1, 3), (5, 11)):
        x = np.random.default_rng(steps).normal(size=(batch, steps, 4)).astype("float32")
        np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.needs_training
def test_model_checkpoint_saves_an_unregistered_model_that_loads(tmp_path):
    from jaxlayer import PortableLayer

    model, _, _ = BUILDERS["plain_closure"]()
    x, y = data()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path = tmp_path / "best.keras"
    model.fit(x, y, epochs=2, batch_size=16, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=False)])
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], PortableLayer)
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)))
