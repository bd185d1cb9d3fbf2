"""B1: jaxlayer imports no optional framework beyond the active backend's own,
even through build, fit and predict: on jax none, on torch no tensorflow, on
numpy neither tensorflow nor torch (each checked in a fresh process, with a
check that the check itself can fail). The subprocesses are launched once,
from the jax test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import BACKEND

pytestmark = pytest.mark.skipif(
    BACKEND != "jax", reason="the fresh processes pick their own backend; launched from the jax run"
)

# Keras itself imports scikit-learn and matplotlib when they are installed
# (plain Dense models do too), so only the frameworks are checked here.
OPTIONAL = ["tensorflow", "torch", "haiku", "flax", "equinox"]

SCRIPT = """
import json, sys
{extra}
import numpy as np, jax, jax.numpy as jnp, keras
import jaxlayer
def init_fn(rng, inputs):
    return {{"w": jax.random.normal(rng, (inputs.shape[-1], 2))}}
def call_fn(params, rng, inputs, training):
    y = inputs @ params["w"]
    return jnp.where(jax.random.bernoulli(rng, 0.9, y.shape), y, 0.0) if training else y
model = keras.Sequential([keras.Input((3,)), jaxlayer.JaxLayer(call_fn, init_fn, seed=0)])
model.compile("sgd", "mse")
if keras.config.backend() != "numpy":  # numpy: inference only
    model.fit(np.ones((8, 3), "float32"), np.ones((8, 2), "float32"), epochs=1, verbose=0)
model.predict(np.ones((2, 3)), verbose=0)
model.layers[0](np.ones((2, 3), "float32"))
print(json.dumps(sorted(m for m in {optional} if m in sys.modules)))
"""


def _imported(extra="", backend="jax"):
    env = dict(os.environ, KERAS_BACKEND=backend)
    script = SCRIPT.format(extra=extra, optional=OPTIONAL)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend, own", [("jax", []), ("torch", ["torch"]), ("numpy", [])])
def test_build_fit_predict_import_no_framework_beyond_the_backend(backend, own):
    if backend == "torch":
        pytest.importorskip("torch")
    assert _imported(backend=backend) == own


def test_the_check_detects_an_import():
    # Guards against a check that cannot fail: an explicit import is seen.
    pytest.importorskip("haiku")
    assert "haiku" in _imported("import haiku")


def test_import_jaxlayer_alone_is_light():
    script = f"import sys, jaxlayer; print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, KERAS_BACKEND="jax"), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
