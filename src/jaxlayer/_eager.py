"""When the layer may skip Keras's `Layer.__call__` for an eager call.

Keras's `__call__` converts inputs, opens name/autocast/distribution scopes,
tracks masks, losses and the training flag. For a plain eager call on one
concrete tensor none of that changes anything, and its ~0.1-0.3 ms per call
would dominate small compiled models, so the layer calls `call` directly.
Anything unusual takes the full path.
"""

from __future__ import annotations

from typing import Any

import keras

try:  # Keras internals; another layout of Keras just disables the shortcut.
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import in_stateless_scope
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    from keras.src.backend.common.variables import get_autocast_scope
except ImportError:  # pragma: no cover
    global_state = None

    # Never consulted: without `global_state` the shortcut is off.
    def in_stateless_scope() -> bool:
        return True

    def in_symbolic_scope() -> bool:
        return True

    def get_autocast_scope() -> Any:
        return None


def keras_would_only_call(layer: keras.layers.Layer, inputs: Any) -> bool:
    """True when Keras's `Layer.__call__` has nothing to do but call `call`.

    No input conversion, mask, input spec, outer layer call (training flag,
    losses), autocast or distribution scope, stateless/symbolic trace,
    regularizer, remat or quantization.
    """
    if global_state is None:  # pragma: no cover
        return False
    return (
        layer.input_spec is None
        and layer.activity_regularizer is None
        and not getattr(layer, "_remat_mode", None)
        and getattr(layer, "quantization_mode", None) is None
        and not layer._losses
        and layer.compute_dtype == layer.variable_dtype
        and keras.backend.standardize_dtype(inputs.dtype) == layer.input_dtype
        and getattr(inputs, "_keras_mask", None) is None
        and global_state.get_global_attribute("current_call_ctx") is None
        and global_state.get_global_attribute("distribution") is None
        and get_autocast_scope() is None
        and not in_stateless_scope()
        and not in_symbolic_scope()
    )
