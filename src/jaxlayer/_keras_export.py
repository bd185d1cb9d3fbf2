"""Which Keras `model.export` format, if any, is running on the call stack.

Some export paths trace the layer in ways that cannot see into JAX (tf2onnx
on the tensorflow backend, torch's tracers on torch, jax2onnx on a portable
layer's stored programs). Nothing in those traces says which format is being
written, so the caller's frames are checked for Keras's export modules. Used
only for early, clear errors: a Keras that moves these modules loses the
early error, not the export.
"""

from __future__ import annotations

import sys

# Keras's export modules, by the format they write.
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
