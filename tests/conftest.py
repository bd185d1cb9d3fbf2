"""Shared test setup. Each pytest process runs under one Keras backend
(KERAS_BACKEND, read once by Keras); `make test` runs one process per backend."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.config.backend()


def pytest_report_header(config):
    return f"Keras backend: {BACKEND} (keras {keras.__version__}, jax {jax.__version__}); NNX mode: {os.environ.get('KERAS_NNX_ENABLED', 'false')}"


def pytest_collection_modifyitems(config, items):
    if BACKEND != "numpy":
        return
    skip = pytest.mark.skip(
        reason="the numpy Keras backend has no autodiff: JaxLayer runs inference only there"
    )
    for item in items:
        if "needs_training" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Fresh Keras names and global state for every test. Without a full
    # `gc.collect()` (free_memory=True), which costs 1-2.5 s per test once
    # JAX, TensorFlow and torch are loaded: that was half of `make test`.
    keras.backend.clear_session(free_memory=False)
    yield


def to_numpy(x):
    """Any backend tensor (or JAX array) as a NumPy array."""
    return keras.ops.convert_to_numpy(x) if not isinstance(x, (np.ndarray, jax.Array)) else np.asarray(x)


def tree_allclose(a, b, rtol=1e-5, atol=1e-6):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(to_numpy(x), to_numpy(y), rtol=rtol, atol=atol)
