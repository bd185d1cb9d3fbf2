"""The JAX backend bridge: values are already JAX arrays.

Eager calls and calls inside Keras's compiled `fit` / `predict` both go
through the `jax.jit` of the program, cached per training flag (JAX itself
caches the compiled code per input shapes and dtypes). Inside an outer trace
the nested `jit` is inlined by XLA, so it costs nothing there.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
from jax.core import Tracer

from .._host import is_spread
from .base import Bridge


def _in_keras_symbolic_scope() -> bool:
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:  # pragma: no cover - older/newer Keras layouts
        return False
    return in_symbolic_scope()


class JaxBridge(Bridge):
    name = "jax"

    # Copies: Keras's JAX trainer donates variable buffers to `fit` /
    # `predict`, which would delete arrays shared with `get_params()` results
    # or with the user's initial `params=` / `state=`.
    def to_jax(self, value: Any) -> jax.Array:
        return jax.numpy.array(value, copy=True)

    def from_jax(self, array: Any) -> Any:
        # A buffer copy on the device: unlike `jnp.array(copy=True)` it needs
        # no XLA compilation per shape (~0.1 s each on CPU at build time).
        if is_spread(array):
            # A global array spanning several processes (`jax.distributed`),
            # e.g. an `init_fn` output under a distribution: it can only be
            # copied within its own sharding; Keras then lays it out.
            return jax.device_put(array, array.sharding, may_alias=False)
        return jax.device_put(array, may_alias=False)

    def is_eager_tensor(self, value: Any) -> bool:
        return isinstance(value, jax.Array) and not isinstance(value, Tracer)

    def seed_to_key(self, seed: Any) -> jax.Array:
        return jax.numpy.asarray(seed, dtype=jax.numpy.uint32)

    def build_context(self, inputs: Any, layer_name: str):
        tracing = any(isinstance(leaf, Tracer) for leaf in jax.tree.leaves(inputs))
        if not tracing:
            return contextlib.nullcontext()
        if _in_keras_symbolic_scope():
            # Keras is inferring shapes by tracing a model's `call`; the
            # parameters must still be concrete, so run `init_fn` eagerly.
            return jax.ensure_compile_time_eval()
        raise ValueError(
            f"JaxLayer `{layer_name}` cannot be built inside a `jax.jit` (or other "
            f"JAX) trace: `init_fn` would create its parameters as tracers. Build "
            f"it first, outside the traced function: call it once on a concrete "
            f"batch, call `layer.build(input_shape)`, or put it in a model built "
            f"with `keras.Input`. Received inputs that are JAX tracers."
        )

    def run(self, program, params, state, rng, inputs, training):
        return program.jitted(training)(params, state, rng, inputs)
