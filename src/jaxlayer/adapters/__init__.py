"""Keras layers for models written with Flax (Linen and NNX), Haiku and Equinox.

Each adapter is a `JaxLayer` subclass that turns a framework's model into
`call_fn` / `init_fn` / `params` / `state`. Importing this package imports no
framework: each adapter imports its framework when it is constructed.
"""

from .equinox import EquinoxLayer
from .flax_linen import FlaxLayer
from .haiku import HaikuLayer
from .nnx import NnxLayer

#: The adapter classes (`jaxlayer` registers a portable stand-in for each).
ADAPTERS = (FlaxLayer, NnxLayer, HaikuLayer, EquinoxLayer)

__all__ = ["FlaxLayer", "NnxLayer", "HaikuLayer", "EquinoxLayer"]
