"""Optional packages the demo needs, checked up front with a one-line install hint."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


class MissingDependency(RuntimeError):
    """An optional package is not installed; the message is one line with the fix."""


@dataclass(frozen=True)
class Requirement:
    """An importable module, the distribution that provides it and its jaxlayer extra."""

    module: str
    distribution: str
    extra: str

    def hint(self, purpose: str) -> str:
        return (
            f"{purpose} needs {self.distribution} (module `{self.module}`), which is not "
            f'installed: pip install "jaxlayer[{self.extra}]"'
        )


SKLEARN = Requirement("sklearn", "scikit-learn", "demo")
MATPLOTLIB = Requirement("matplotlib", "matplotlib", "demo")
HAIKU = Requirement("haiku", "dm-haiku", "demo")
FLAX = Requirement("flax", "flax", "flax")
EQUINOX = Requirement("equinox", "equinox", "equinox")
TENSORFLOW = Requirement("tensorflow", "tensorflow", "tensorflow")
TORCH = Requirement("torch", "torch", "torch")

BACKEND_REQUIREMENTS = {"jax": (), "tensorflow": (TENSORFLOW,), "torch": (TORCH,)}


def check(requirements: tuple[Requirement, ...] | list[Requirement], purpose: str) -> None:
    """Raises `MissingDependency` for the first requirement that cannot be imported.

    Uses `find_spec`, so nothing heavy (TensorFlow, torch) is imported here. A
    module blocked with `sys.modules[name] = None` counts as missing.
    """
    for requirement in requirements:
        try:
            found = importlib.util.find_spec(requirement.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingDependency(requirement.hint(purpose))


def require(requirement: Requirement, purpose: str):
    """Imports and returns `requirement.module`, or raises `MissingDependency`."""
    try:
        return importlib.import_module(requirement.module)
    except ImportError:
        raise MissingDependency(requirement.hint(purpose)) from None
