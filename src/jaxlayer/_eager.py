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

from . import _keras_internals as internals


def is_plain_eager_call(layer: Any, args: tuple, kwargs: dict) -> bool:
    """True when `layer(*args, **kwargs)` may go straight to `layer.call`.

    One positional tensor the bridge runs directly, at most a Python-bool
    `training=`, the layer's own `call`, and nothing for Keras to do.
    """
    if len(args) != 1 or not layer.built:
        return False
    if kwargs and (len(kwargs) > 1 or "training" not in kwargs):
        return False
    if not isinstance(kwargs.get("training", False), bool):
        return False
    return layer._bridge.is_eager_tensor(args[0]) and keras_would_only_call(layer, args[0])


def keras_would_only_call(layer: keras.layers.Layer, inputs: Any) -> bool:
    """True when Keras's `Layer.__call__` has nothing to do but call `call`.

    No input conversion, mask, input spec, outer layer call (training flag,
    losses), autocast or distribution scope, stateless/symbolic trace,
    regularizer, remat or quantization.
    """
    if not internals.keras_internals_available:  # pragma: no cover
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
        and internals.global_attribute("current_call_ctx") is None
        and internals.global_attribute("distribution") is None
        and not internals.autocast_scope_active()
        and not internals.in_stateless_scope()
        and not internals.in_symbolic_scope()
    )
