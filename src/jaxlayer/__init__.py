"""jaxlayer: JAX models as Keras 3 layers, on every Keras backend.

`import jaxlayer` imports only keras and jax; framework adapters import their
framework when they are used.
"""

from ._layer import JaxLayer as JaxLayer

__version__ = "0.1.0"

__all__ = ["JaxLayer", "__version__"]
