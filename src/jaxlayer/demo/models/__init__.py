"""One small digits CNN per JAX framework, each wrapped in its matching Keras layer.

Every module here exposes `REQUIRES` (optional packages), `DESCRIPTION`,
`register()` (makes its functions/classes known to Keras, so a saved model
loads) and `make_layer(seed)`; none imports its framework at import time.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FRAMEWORKS = {
    "jax": "jax_cnn",
    "haiku": "haiku_cnn",
    "flax": "flax_cnn",
    "nnx": "nnx_cnn",
    "equinox": "equinox_cnn",
}


def load(framework: str) -> ModuleType:
    """The model module for `framework` (one of `FRAMEWORKS`)."""
    if framework not in FRAMEWORKS:
        raise ValueError(
            f"Unknown demo framework `{framework}`. Choose one of "
            f"{', '.join(FRAMEWORKS)}. Received: framework={framework!r}"
        )
    return importlib.import_module(f"{__name__}.{FRAMEWORKS[framework]}")
