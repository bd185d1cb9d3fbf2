"""jaxlayer: JAX models as Keras 3 layers, on every Keras backend.

`import jaxlayer` imports only keras and jax; framework adapters import their
framework when they are used.
"""

from ._layer import JaxLayer as JaxLayer

__version__ = "0.1.0"

_ADAPTERS = ("FlaxLayer", "NnxLayer", "HaikuLayer", "EquinoxLayer")

__all__ = ["JaxLayer", *_ADAPTERS, "__version__"]


def __getattr__(name: str):
    # Adapters load on first access, so `import jaxlayer` imports no framework.
    if name in _ADAPTERS:
        from . import adapters

        return getattr(adapters, name)
    raise AttributeError(f"module `jaxlayer` has no attribute `{name}`")
