"""jaxlayer: JAX models as Keras 3 layers, on every Keras backend.

`import jaxlayer` imports only keras and jax: the adapter classes are
defined here, and each imports its framework when it is constructed. Every
layer class is registered with Keras, with the `PortableLayer` class that
stands in for it, so `keras.models.load_model` finds a layer saved from any
of them (source or portable form) once `jaxlayer` is imported.
"""

from . import adapters as _adapters
from ._checkpoint import LoadReport as LoadReport
from ._config_codec import SavedNode as SavedNode
from ._host import replicated_variables as replicated_variables
from ._host import to_host as to_host
from ._layer import JaxLayer as JaxLayer
from ._portable_layer import PortableLayer as PortableLayer
from ._portable_layer import portable_class as _portable_class
from .adapters import EquinoxLayer as EquinoxLayer
from .adapters import FlaxLayer as FlaxLayer
from .adapters import HaikuLayer as HaikuLayer
from .adapters import NnxLayer as NnxLayer

__version__ = "0.2.0"

for _layer_class in (JaxLayer, *_adapters.ADAPTERS):
    _portable_class(_layer_class.__name__)

__all__ = [
    "JaxLayer",
    "FlaxLayer",
    "NnxLayer",
    "HaikuLayer",
    "EquinoxLayer",
    "PortableLayer",
    "LoadReport",
    "SavedNode",
    "to_host",
    "replicated_variables",
    "__version__",
]
