"""The layer under JAX transformations of an enclosing model: Keras's remat
(`keras.RematScope`) and a `training` flag that a trace turned into an array.

Two situations:

- The layer itself is rematerialized (created inside `keras.RematScope`):
  Keras calls its `rematerialized_call`. Only the pure program is
  recomputed in the backward pass; the rng draw, the variable reads and the
  state update stay outside, so the recomputation reproduces the forward
  pass exactly, and the training flag stays a Python value.
- A whole model created inside the scope is rematerialized: Keras runs its
  `call` under `jax.checkpoint`, which traces the flag the model passes on.
  `static_training` recovers the Python value from Keras's call context
  where it can; otherwise `run_with_traced_flag` selects the program with
  `jax.lax.cond`, which works for layers without state or rng.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax.core import Tracer

from ._keras_internals import outer_call_training


def static_training(training: Any) -> Any:
    """The Python value of a `training` flag that a trace turned into an array.

    Keras's remat of an enclosing model (`keras.RematScope(mode="full")`) runs
    its `call` under `jax.checkpoint`, which traces the flag it passes on;
    the outer layer's Keras call context still holds it as a Python bool.
    """
    if not isinstance(training, Tracer):
        return training
    value = outer_call_training()
    return training if value is None else value


def run_with_traced_flag(
    layer: Any, run: Callable, inputs: Any, params: list, state: list, training: Any
) -> tuple[Any, list]:
    """Both programs, chosen by `jax.lax.cond` on a traced `training` flag.

    A layer with state or an rng cannot be run so: its new state, or its
    seed generator's, would be a value of the enclosing transformation's
    trace, which Keras reads after that trace has ended.
    """
    if state or layer.seed_generator is not None:
        what = "state" if state else "an `rng` (a Keras seed generator)"
        raise ValueError(
            f"JaxLayer `{layer.name}` has {what} and was called with a traced "
            f"`training` flag: a JAX transformation of the enclosing model traced "
            f"it (Keras's remat of a whole model created inside "
            f"`keras.RematScope`), and the update could not leave that "
            f"transformation. Create the model outside `keras.RematScope` and the "
            f"layers inside it: each layer's program is then rematerialized, with "
            f"its rng draw and state update outside. Received: training={training}"
        )

    def branch(flag: bool) -> Callable:
        def run_branch(operands):
            outputs, new_state = run(inputs, None, *operands, training=flag)
            return outputs, list(new_state)

        return run_branch

    try:
        return jax.lax.cond(training, branch(True), branch(False), (params, state))
    except TypeError as error:
        raise ValueError(
            f"JaxLayer `{layer.name}` was called with a traced `training` flag (a JAX "
            f"transformation of the enclosing model traced it), so both the "
            f"training and the inference program run under `jax.lax.cond`, which "
            f"needs their outputs to have the same structure, shapes and dtypes. "
            f"Make `call_fn` return the same kind of outputs for both values of "
            f"`training`, or create the model outside `keras.RematScope` (and the "
            f"layers inside it). JAX said: {error}"
        ) from error


def rematerialized_call(layer: Any, keras_remat: Callable[[Callable], Callable]) -> Callable:
    """The layer's `call` with only its pure program under Keras's remat.

    `keras_remat(fn)` is Keras's own `Layer.rematerialized_call` for `fn`.
    """

    def remat_run(inputs, rng, params, state, training):
        pure = functools.partial(layer._run, training=training)
        return keras_remat(pure)(inputs, rng, params, state)

    def call(inputs: Any, training: Any = False) -> Any:
        return layer._call_with(remat_run, inputs, training)

    return call
