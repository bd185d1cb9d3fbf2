"""Keras layers for models written with Flax (Linen and NNX), Haiku and Equinox.

Each adapter is a `JaxLayer` subclass that turns a framework's model into
`call_fn` / `init_fn` / `params` / `state`. Importing this package imports no
framework: the classes are loaded on first access, and each framework is
imported only when its adapter is constructed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_ADAPTERS = {
    "FlaxLayer": "flax_linen",
    "NnxLayer": "nnx",
    "HaikuLayer": "haiku",
    "EquinoxLayer": "equinox",
}

__all__ = ["FlaxLayer", "NnxLayer", "HaikuLayer", "EquinoxLayer"]  # = the keys of _ADAPTERS

if TYPE_CHECKING:  # the classes, for type checkers; at run time `__getattr__` loads them
    from .equinox import EquinoxLayer as EquinoxLayer
    from .flax_linen import FlaxLayer as FlaxLayer
    from .haiku import HaikuLayer as HaikuLayer
    from .nnx import NnxLayer as NnxLayer


def __getattr__(name: str) -> Any:
    module = _ADAPTERS.get(name)
    if module is None:
        raise AttributeError(f"module `jaxlayer.adapters` has no attribute `{name}`")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
