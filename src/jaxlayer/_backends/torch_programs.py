"""The torch bridge's two compiled JAX programs: forward with residuals, and backward.

The forward runs a layer program under `jax.vjp` and returns the outputs,
the new state and the pullback's residuals, except those that are params or
inputs themselves: a program's outputs are fresh buffers, so returning a
kernel kept for the input gradient (or an input kept for the kernel
gradient) would copy it on every step. `ResidualLayout` records, per traced
signature, which residual is which leaf, and the backward takes those from
the torch tensors again (`torch.py` saves them with `save_for_backward`).
No torch import here: these are plain JAX functions.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from .._float_vjp import float_vjp


def vjp_forward(program, training, layouts, flat, rng, *, mask, layout):
    """Outputs, new state and the residuals of the pullback for the leaves where `mask` is set.

    `mask` marks float params and inputs only (see `_float_vjp`); the
    pullback maps the float outputs' cotangents to one gradient per marked
    leaf. Residuals that are params or inputs themselves (a kernel kept for
    the input gradient, an input kept for the kernel gradient) are not
    returned: a program's outputs are fresh buffers, so returning them would
    copy every such param on each step. The backward takes them from the
    torch tensors instead (`ResidualLayout`); `layouts` records, per traced
    signature, which residual is which leaf.
    """
    num_params, num_state, inputs_treedef = layout
    state_end = num_params + num_state
    output_treedef = []

    def run(params, state, rng, input_leaves):
        inputs = jax.tree.unflatten(inputs_treedef, input_leaves)
        outputs, new_state = program(params, state, rng, inputs, training)
        leaves, treedef = jax.tree.flatten(outputs)
        output_treedef.append(treedef)
        return leaves, new_state

    vjp = float_vjp(
        run,
        flat[:num_params],
        flat[num_params:state_end],
        rng,
        flat[state_end:],
        wanted=(mask[:num_params], mask[state_end:]),
    )
    outputs = jax.tree.unflatten(output_treedef[-1], vjp.output_leaves)
    residuals, treedef = jax.tree.flatten(vjp.pullback)
    # State is written back after the forward pass: never reused.
    reusable = {id(leaf): i for i, leaf in enumerate(flat) if not num_params <= i < state_end}
    slots = tuple(reusable.get(id(leaf), -1) for leaf in residuals)
    layouts[signature(flat, rng, mask, layout)] = ResidualLayout(treedef, slots)
    return outputs, vjp.new_state, [r for r, slot in zip(residuals, slots) if slot < 0]


class ResidualLayout(NamedTuple):
    """Where each residual of a traced pullback comes from.

    `slots[i]` is the index (in the params, state, inputs list) of the leaf
    that residual `i` is, or -1 for a residual the forward pass returns.
    """

    treedef: Any
    slots: tuple[int, ...]

    def reused(self) -> list[int]:
        """The leaves the backward pass reads from torch, in order."""
        return sorted({slot for slot in self.slots if slot >= 0})


def signature(flat, rng, mask, layout) -> tuple:
    """What decides a trace of `_vjp_forward` (shapes, dtypes, static args)."""
    avals = tuple((x.shape, x.dtype) for x in flat)
    rng_leaves, rng_treedef = jax.tree.flatten(rng)
    rng_avals = tuple((x.shape, x.dtype) for x in rng_leaves)
    return avals, rng_avals, rng_treedef, mask, layout


@functools.partial(jax.jit, static_argnames=("residual_layout",))
def vjp_backward(returned, reused, cotangents, *, residual_layout):
    returned = iter(returned)
    residuals = [reused[s] if s >= 0 else next(returned) for s in residual_layout.slots]
    pullback = jax.tree.unflatten(residual_layout.treedef, residuals)
    param_grads, input_grads = pullback(cotangents)
    return list(param_grads) + list(input_grads)


class CompiledForward(NamedTuple):
    fn: Callable
    layouts: dict


_forward_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_forward(program: Any, training: bool) -> CompiledForward:
    """The `jax.jit` of `_vjp_forward` for one program and training flag, made once."""
    per_program = _forward_cache.setdefault(program, {})
    compiled = per_program.get(training)
    if compiled is None:
        layouts: dict = {}
        fn = jax.jit(
            functools.partial(vjp_forward, program, training, layouts),
            static_argnames=("mask", "layout"),
        )
        compiled = per_program[training] = CompiledForward(fn, layouts)
    return compiled
