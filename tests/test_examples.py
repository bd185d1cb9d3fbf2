"""Every script in `examples/` runs (with one epoch), so the examples never rot.

Each example is a subprocess that picks its own Keras backend (the backend
examples set KERAS_BACKEND themselves), so this file runs once, in the jax
test process. An example whose framework or backend bridge is missing is
skipped, saying which.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BACKEND

if BACKEND != "jax":
    pytest.skip(
        "each example runs in its own subprocess with its own backend; they run once, "
        "in the KERAS_BACKEND=jax test process",
        allow_module_level=True,
    )

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"

# example -> (modules it needs, what it prints when it worked)
EXAMPLES = {
    "plain_jax.py": (["sklearn"], "pure-JAX call_fn(layer.get_params(), x) matches model.predict"),
    "haiku_cnn.py": (["sklearn", "haiku"], "reloaded model gives identical predictions: True"),
    "flax_linen.py": (["sklearn", "flax", "jaxlayer.adapters.flax_linen"], "Flax variables:"),
    "flax_nnx.py": (["sklearn", "flax", "jaxlayer.adapters.nnx"], "non-trainable state:"),
    "equinox_mlp.py": (
        ["sklearn", "equinox", "jaxlayer.adapters.equinox"],
        "the trained Equinox model matches model.predict",
    ),
    "tensorflow_backend.py": (
        ["sklearn", "tensorflow", "jaxlayer._backends.tensorflow"],
        "the JAX params were trained too",
    ),
    "torch_backend.py": (
        ["sklearn", "torch", "jaxlayer._backends.torch"],
        "the JAX params were trained too",
    ),
    # Starts 2 local processes (jax.distributed on 127.0.0.1) and prints process 0's output.
    "multi_process.py": (["sklearn"], "gathered params match the saved model: True"),
}


def _missing(modules: list[str]) -> list[str]:
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(module)
    return missing


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES_DIR.glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name):
    modules, success_line = EXAMPLES[name]
    missing = _missing(modules)
    if missing:
        pytest.skip(f"examples/{name} needs {', '.join(missing)}, which is not available here")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / name), "--epochs", "1"],
        env=dict(os.environ, KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "held-out accuracy:" in result.stdout
    assert success_line in result.stdout
