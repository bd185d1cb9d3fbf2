"""The `jaxlayer demo` job: a small CNN per JAX framework trained on digits with Keras.

`run_demo(framework, epochs, out_dir)` trains in the active Keras backend;
the `jaxlayer demo` command (see `jaxlayer.cli`) picks the backend by running
itself in a child process when needed, since Keras reads KERAS_BACKEND once.
"""

from ._deps import MissingDependency as MissingDependency
from ._train import check_requirements as check_requirements
from ._train import run_demo as run_demo
from .models import FRAMEWORKS as FRAMEWORKS

BACKENDS = ("jax", "tensorflow", "torch")

__all__ = ["BACKENDS", "FRAMEWORKS", "MissingDependency", "check_requirements", "run_demo"]
