"""jaxlayer: JAX models as Keras 3 layers, on every Keras backend.

`import jaxlayer` imports only keras and jax; framework adapters import their
framework when they are used. The adapter classes are registered with Keras
here (without their frameworks), so that `keras.models.load_model` finds a
portable layer saved from any of them.
"""

from typing import TYPE_CHECKING

from . import adapters as _adapters
from ._host import replicated_variables as replicated_variables
from ._host import to_host as to_host
from ._layer import JaxLayer as JaxLayer
from ._portable import PortableLayer as PortableLayer
from ._saving import SavedNode as SavedNode

__version__ = "0.2.0"

_ADAPTERS = ("FlaxLayer", "NnxLayer", "HaikuLayer", "EquinoxLayer")
for _name in _ADAPTERS:
    getattr(_adapters, _name)  # imports the adapter module, which registers the class

__all__ = [
    "JaxLayer",
    "PortableLayer",
    "SavedNode",
    "to_host",
    "replicated_variables",
    "FlaxLayer",
    "NnxLayer",
    "HaikuLayer",
    "EquinoxLayer",
    "__version__",
]

if TYPE_CHECKING:  # the adapter classes, for type checkers (see `__getattr__`)
    from .adapters import EquinoxLayer as EquinoxLayer
    from .adapters import FlaxLayer as FlaxLayer
    from .adapters import HaikuLayer as HaikuLayer
    from .adapters import NnxLayer as NnxLayer


def __getattr__(name: str):
    if name in _ADAPTERS:
        return getattr(_adapters, name)
    raise AttributeError(f"module `jaxlayer` has no attribute `{name}`")
