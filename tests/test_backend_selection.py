"""B8: an unsupported Keras backend is refused at construction, naming the fix."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from jaxlayer import JaxLayer
from jaxlayer._backends import get_bridge


def test_unsupported_backend_is_refused_at_construction(monkeypatch):
    monkeypatch.setattr(keras.config, "backend", lambda: "openvino")
    get_bridge.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"does not support the `openvino` Keras backend.*`jax`, `tensorflow`, `torch`, `numpy`.*KERAS_BACKEND"):
            JaxLayer(lambda params, inputs: inputs, params={"w": np.ones(2, "float32")})
    finally:
        monkeypatch.undo()
        get_bridge.cache_clear()
    assert get_bridge().name == keras.config.backend()
