"""The interface every backend bridge implements.

A bridge moves values between the active Keras backend and JAX and runs a
`Program` (the model as a pure JAX function) on backend tensors, so that
Keras's autodiff on that backend sees gradients for the parameters and the
inputs. The layer calls only these methods; it never looks at the backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .._rng import seed_words


class Bridge:
    """Base class: the methods a backend bridge provides."""

    #: The Keras backend name this bridge serves.
    name: str = ""

    def to_jax(self, value: Any) -> jax.Array:
        """Eagerly converts one backend tensor or NumPy array to a JAX array."""
        return jax.numpy.asarray(np.asarray(value))

    def variable_to_jax(self, variable: Any) -> jax.Array:
        """A Keras variable's value as a JAX array of the variable's dtype (a copy)."""
        return self.to_jax(variable.value)

    def from_jax(self, array: Any) -> Any:
        """Converts a JAX array to a value `add_weight(initializer=...)` accepts."""
        return np.asarray(array)

    def seed_to_key(self, seed: Any) -> jax.Array:
        """A Keras seed tensor (shape [2]) as a raw uint32 JAX PRNG key, eagerly."""
        return jax.numpy.asarray(seed_words(seed))

    def adopt_variable(self, variable: Any) -> None:
        """Adapts a Keras variable the layer just created to the backend."""

    def changing_variables(self, layer: Any) -> contextlib.AbstractContextManager:
        """A context in which the layer adds and removes variables after its build."""
        return contextlib.nullcontext()

    def is_eager_tensor(self, value: Any) -> bool:
        """Whether `value` is a concrete backend tensor the layer may run on
        directly, bypassing Keras's `Layer.__call__` (False: always the full path)."""
        return False

    def build_context(self, inputs: Any, layer_name: str) -> contextlib.AbstractContextManager:
        """A context in which `init_fn` may run now; raises where it cannot."""
        return contextlib.nullcontext()

    def run(
        self,
        program: Any,
        params: Sequence[Any],
        state: Sequence[Any],
        rng: Any,
        inputs: Any,
        training: bool,
    ) -> tuple[Any, list]:
        """Runs `program` on backend values; returns `(outputs, new_state)`."""
        raise NotImplementedError(f"{type(self).__name__}.run")
