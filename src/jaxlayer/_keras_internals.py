"""Every private Keras name jaxlayer uses, in one place.

Keras has no public API for these. Each entry says the Keras versions it was
checked against and what degrades if a Keras release moves or changes it;
none of them can make a model compute wrong values. A Keras upgrade means
reading this file (and `tests/test_keras_internals.py`, which fails when an
entry here stops resolving).

Private attributes of Keras objects that the layer reads or sets (also
checked against Keras 3.10-3.15):

- `Layer._post_build`, `Layer._lock_state`, `Layer._called`: what Keras's
  build wrapper does, repeated for layers whose variables exist at
  construction (`JaxLayer._mark_built`).
- `Layer._untrack_variable`: undoes the variables of a failed build.
- `Layer._convert_input_args`, `Variable._autocast`: whether Keras casts
  float inputs / params to the compute dtype (shape inference and export).
- `Layer._remat_mode`, `Layer._losses`: the eager shortcut's preconditions.
- `Variable._path` (torch): made unique without dots for torch's
  `ParameterDict`; `Variable._value` (jax): swapped for a replicated copy by
  `replicated_variables`.
"""

from __future__ import annotations

import sys
from typing import Any

# ------------------------------------------------------------ global state
# keras.src.backend.common.global_state, .stateless_scope, .symbolic_scope,
# .variables (Keras 3.8-3.15). If they move, `keras_internals_available` is
# False: the eager shortcut (`_eager.py`) switches off (eager calls take
# Keras's full `Layer.__call__`, ~0.1-0.3 ms slower), a build inside Keras's
# symbolic shape inference raises the "cannot be built inside a trace"
# error instead of building eagerly, and a traced training flag under
# `keras.RematScope` keeps its traced value (both programs, under lax.cond).
try:
    from keras.src.backend.common import global_state as _global_state
    from keras.src.backend.common.stateless_scope import in_stateless_scope as _in_stateless
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope as _in_symbolic
    from keras.src.backend.common.variables import get_autocast_scope as _autocast_scope

    keras_internals_available = True
except ImportError:  # pragma: no cover - another Keras layout
    _global_state = None
    _in_symbolic = _in_stateless = _autocast_scope = None
    keras_internals_available = False


def in_symbolic_scope() -> bool:
    """Whether Keras is inferring shapes (`compute_output_spec` on a model)."""
    return bool(_in_symbolic is not None and _in_symbolic())


def in_stateless_scope() -> bool:
    """Whether Keras runs the layer statelessly (`stateless_call`, JAX trainers)."""
    return bool(_in_stateless is None or _in_stateless())


def autocast_scope_active() -> bool:
    """Whether a Keras autocast scope (mixed precision call) is open."""
    return bool(_autocast_scope is None or _autocast_scope() is not None)


def global_attribute(name: str) -> Any:
    """A Keras global attribute (`current_call_ctx`, `distribution`), or None."""
    if _global_state is None:  # pragma: no cover
        return None
    return _global_state.get_global_attribute(name)


def outer_call_training() -> Any:
    """The training flag of the Keras layer call in progress, if it is a bool.

    Keras's remat of a whole model traces the flag it passes on, while the
    outer call context still holds the Python value.
    """
    value = getattr(global_attribute("current_call_ctx"), "training", None)
    return value if isinstance(value, bool) else None


# ------------------------------------------------------------------ seeds
# keras.src.random.seed_generator.draw_seed (Keras 3.0-3.15): the global seed
# generator's draw that keras.layers.JaxLayer hands to `init_fn`. If it moves,
# `init_fn` gets a key from `keras.random.SeedGenerator()` made per build:
# still random, but no longer reproducible with `keras.utils.set_random_seed`.
def draw_global_seed() -> Any:
    """A seed from Keras's global seed generator (as `keras.layers.JaxLayer` uses)."""
    try:
        from keras.src.random.seed_generator import draw_seed
    except ImportError:  # pragma: no cover - another Keras layout
        import keras

        return keras.random.SeedGenerator().next()
    return draw_seed(None)


# ------------------------------------------------------------------ torch
# keras.src.backend.torch.core.get_device (Keras 3.0-3.15): the device Keras
# puts torch variables on, for a layer with no variables. If it moves, such a
# layer runs on the CPU.
def torch_default_device() -> str:
    """The torch device Keras creates variables on ("cuda", "cpu", ...)."""
    try:
        from keras.src.backend.torch.core import get_device
    except ImportError:  # pragma: no cover - another Keras layout
        return "cpu"
    return get_device()


# --------------------------------------------------------- model.export
# Keras's export modules by the format they write (Keras 3.10-3.15). Some
# export paths trace the layer in ways that cannot see into JAX (tf2onnx on
# tensorflow, torch's tracers on torch, jax2onnx on stored programs), and
# nothing in those traces says which format is written, so the caller's
# frames are checked for these modules. If they move, the early, clear
# error is lost: the export still fails, with the tracer's own error.
_KERAS_EXPORT_MODULES = {
    "keras.src.export.onnx": "onnx",
    "keras.src.export.torch": "torch",
    "keras.src.export.litert": "litert",
}


def keras_export_format() -> str | None:
    """The format of the Keras `model.export` on the call stack, or None."""
    frame = sys._getframe(1)
    while frame is not None:
        found = _KERAS_EXPORT_MODULES.get(str(frame.f_globals.get("__name__")))
        if found is not None:
            return found
        frame = frame.f_back
    return None
