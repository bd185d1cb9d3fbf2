"""`jax.vjp` of a layer program with respect to its float params and inputs.

Every differentiated call splits into a forward pass that keeps the vjp
residuals and a backward pass that uses them: the portable export
(`_portable_programs.py`), the tensorflow bridge's training calls and the
torch bridge's autograd function. Which leaves meet a cotangent is decided
by `_dtypes.is_float` alone: integer, boolean and complex leaves, the state
and the rng never do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from ._dtypes import is_float


def merge(leaves: Sequence, replacements: Sequence, mask: Sequence[bool]) -> list:
    """`leaves` with the masked ones taken, in order, from `replacements`."""
    remaining = iter(replacements)
    return [next(remaining) if m else leaf for leaf, m in zip(leaves, mask, strict=True)]


class FloatVjp(NamedTuple):
    float_outputs: list
    pullback: Callable
    output_leaves: list
    new_state: list
    param_mask: list[bool]
    input_mask: list[bool]


def float_vjp(
    run: Callable,
    params: list,
    state: Any,
    rng: Any,
    input_leaves: list,
    wanted: tuple[Sequence[bool], Sequence[bool]] | None = None,
) -> FloatVjp:
    """`jax.vjp` of `run(params, state, rng, input_leaves) -> (output_leaves, new_state)`.

    Differentiated with respect to the float params and float input leaves
    (of those, only the ones `wanted = (param_mask, input_mask)` marks, when
    given: the torch bridge skips what autograd does not ask for), for the
    float outputs; the pullback maps the float outputs' cotangents to
    `(param_grads, input_grads)`, one per masked leaf.
    """
    param_mask = [is_float(p.dtype) for p in params]
    input_mask = [is_float(x.dtype) for x in input_leaves]
    if wanted is not None:
        param_mask = [m and w for m, w in zip(param_mask, wanted[0], strict=True)]
        input_mask = [m and w for m, w in zip(input_mask, wanted[1], strict=True)]

    def differentiable(float_params, float_inputs):
        outputs, new_state = run(
            merge(params, float_params, param_mask),
            state,
            rng,
            merge(input_leaves, float_inputs, input_mask),
        )
        return [o for o in outputs if is_float(o.dtype)], (list(outputs), list(new_state))

    floats, pullback, (outputs, new_state) = jax.vjp(
        differentiable,
        [p for p, m in zip(params, param_mask) if m],
        [x for x, m in zip(input_leaves, input_mask) if m],
        has_aux=True,
    )
    return FloatVjp(floats, pullback, outputs, new_state, param_mask, input_mask)
