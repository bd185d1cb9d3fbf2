"""Backend bridges: the only place that looks at `keras.config.backend()`.

`get_bridge()` picks the bridge for the active Keras backend once and caches
it; each bridge lives in its own module and imports its framework lazily.
"""

from __future__ import annotations

import functools

import keras

from .base import Bridge

SUPPORTED_BACKENDS = ("jax", "tensorflow", "torch", "numpy")


@functools.cache
def get_bridge() -> Bridge:
    name = keras.config.backend()
    if name == "jax":
        from .jax import JaxBridge

        return JaxBridge()
    if name == "tensorflow":
        from .tensorflow import TensorflowBridge

        return TensorflowBridge()
    if name == "torch":
        from .torch import TorchBridge

        return TorchBridge()
    if name == "numpy":
        from .numpy import NumpyBridge

        return NumpyBridge()
    raise ValueError(
        f"JaxLayer does not support the `{name}` Keras backend. Supported "
        f"backends: {', '.join(f'`{b}`' for b in SUPPORTED_BACKENDS)} "
        f"(`numpy` for inference only). Set the KERAS_BACKEND environment "
        f"variable to one of them before importing Keras. Received: backend={name}"
    )


__all__ = ["Bridge", "SUPPORTED_BACKENDS", "get_bridge"]
