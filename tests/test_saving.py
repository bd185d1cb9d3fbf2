"""B6: `.keras` save/load (in a fresh process), weights files, save-time errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy
from jaxlayer import JaxLayer
from models import dense_init, mlp_apply
from saving_models import saved_call, saved_init, saved_stateful_call, saved_stateful_init

X = np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)
TESTS = Path(__file__).parent

LOAD_SCRIPT = """
import json, sys
import numpy as np, keras
sys.path.insert(0, {tests!r})
import jaxlayer  # registers the layer classes
import saving_models  # registers the functions
model = keras.models.load_model({path!r})
x = np.load({x!r})
print(json.dumps({{"out": keras.ops.convert_to_numpy(model(x)).tolist(),
                   "names": sorted(v.name for v in model.weights)}}))
"""


def _load_in_fresh_process(path, x_path):
    script = LOAD_SCRIPT.format(tests=str(TESTS), path=str(path), x=str(x_path))
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_save_and_load_in_fresh_process_gives_identical_outputs(tmp_path):
    model = keras.Sequential([keras.Input((4,)), JaxLayer(saved_stateful_call, saved_stateful_init, name="body")])
    if BACKEND != "numpy":
        model.layers[0](X, training=True)  # move the state away from its initial value
    expected = to_numpy(model(X))
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", X)
    loaded = _load_in_fresh_process(path, tmp_path / "x.npy")
    np.testing.assert_array_equal(np.asarray(loaded["out"], "float32"), expected)
    assert loaded["names"] == sorted(v.name for v in model.weights)


def test_load_in_same_process_does_not_call_init_fn(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4,)), JaxLayer(saved_call, saved_init)])
    expected = to_numpy(model(X))
    model.save(tmp_path / "m.keras")
    import saving_models

    def fail(rng, inputs):
        raise AssertionError("init_fn called at load")

    monkeypatch.setattr(saving_models.saved_init, "__code__", fail.__code__)
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(to_numpy(loaded(X)), expected)


def test_layer_built_from_params_saves_and_loads(tmp_path):
    params = {"dense": {"kernel": np.ones((4, 8), "float32"), "bias": np.zeros(8, "float32")},
              "out": {"kernel": np.full((8, 3), 0.5, "float32"), "bias": np.ones(3, "float32")},
              "config": ("tanh", None, 2)}
    layer = JaxLayer(saved_call, params=params)
    model = keras.Sequential([keras.Input((4,)), layer])
    model.save(tmp_path / "p.keras")
    loaded = keras.models.load_model(tmp_path / "p.keras")
    np.testing.assert_array_equal(to_numpy(loaded(X)), to_numpy(model(X)))
    assert loaded.layers[0].params["config"] == ("tanh", None, 2)


def test_unregistered_function_fails_at_save_time_with_save_as_source(tmp_path):
    model = keras.Sequential([keras.Input((4,)), JaxLayer(lambda params, inputs: mlp_apply(params, inputs), dense_init, save_as="source")])
    with pytest.raises(ValueError, match=r"`call_fn` \(.*lambda.*\) is not registered.*register_keras_serializable.*save_weights"):
        model.save(tmp_path / "bad.keras")


def test_unregistered_init_fn_fails_at_save_time_with_save_as_source(tmp_path):
    model = keras.Sequential([keras.Input((4,)), JaxLayer(saved_call, dense_init, save_as="source")])
    with pytest.raises(ValueError, match=r"`init_fn` \(dense_init\) is not registered"):
        model.save(tmp_path / "bad.keras")


def test_save_weights_and_load_weights_work_for_any_function(tmp_path):
    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), JaxLayer(lambda params, inputs: mlp_apply(params, inputs), dense_init)])

    model = build()
    model.layers[0].set_params({k: {n: v * 2 + 1 for n, v in d.items()} for k, d in model.layers[0].get_params().items()})
    model.save_weights(tmp_path / "w.weights.h5")
    other = build()
    assert not np.allclose(to_numpy(other(X)), to_numpy(model(X)))
    other.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(to_numpy(other(X)), to_numpy(model(X)))


def test_config_round_trip_keeps_seed_and_layout():
    layer = JaxLayer(saved_call, saved_init, seed=5, name="x")
    layer(X)
    config = layer.get_config()
    assert config["seed"] == 5 and "params_spec" in config
    json.dumps(config)  # JSON-serializable
    clone = JaxLayer.from_config(config)
    assert clone.built and [v.name for v in clone.weights] == [v.name for v in layer.weights]
    assert clone.params["dense"]["kernel"].shape == (4, 8)
    clone.set_params(layer.get_params())
    np.testing.assert_array_equal(to_numpy(clone(X)), to_numpy(layer(X)))
