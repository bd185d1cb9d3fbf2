"""LoRA kernels used in low rank: `x @ W + (x @ A) @ B`, without `W + A @ B`.

`call_fn` is written for a plain kernel `W'`. Handing it the merged
`W' = W + (alpha / r) A @ B` makes every step form `W'` and, in the
backward pass, the kernel-sized gradient `dW'` that A's and B's gradients
are then reduced from: the same dot as full fine-tuning. Here `call_fn` is
traced to a jaxpr instead, with an abstract `W'`, and the jaxpr is evaluated
with each adapted kernel kept as its parts (`LowRank`). A `dot_general` that
multiplies an input by such a kernel along its input axis (a Dense layer,
`x @ W'` or `W' @ x`) becomes `x @ W + ((x @ A) @ B)`: the frozen `W` gets no
weight gradient, and A and B get theirs from rank-sized products. Nested
`jit`s are evaluated the same way. Any other use of the kernel (a
convolution, a reshape, a batched dot) receives the merged kernel, as before.

The values are the same up to float rounding; which path runs is invisible
to `call_fn`, which is traced once either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

_JIT_PRIMITIVES = ("pjit", "jit")

#: Off: adapted kernels are handed to `call_fn` merged in every use (the
#: path before this module; `benchmarks/bench_lora.py` compares the two).
ENABLED = True
#: Calls where evaluating the jaxpr failed and the merged path ran instead
#: (a test keeps it at zero for every adapter).
FALLBACKS = 0
#: `dot_general`s traced in low rank (for tests).
LOW_RANK_DOTS = 0


@dataclass
class LowRank:
    """An adapted kernel by its parts: `base + (a @ b)` in `base`'s layout.

    `base` is `W` as `call_fn` would receive it without the adapter (after
    int8 dequantization and in the compute dtype); `a` `(fan_in, r)` already
    scaled by `alpha / r`, `b` `(r, fan_out)`, both float32; `out_first`:
    `W`'s output axis is its first (Equinox `(out, in)`), else its last.
    """

    base: Any
    a: Any
    b: Any
    out_first: bool
    _merged: Any = field(default=None, repr=False)

    def merged(self) -> Any:
        """`W'` itself (formed once, for the uses that need it)."""
        if self._merged is None:
            delta = lora_delta(self.a, self.b, 1.0, self.base.shape, self.out_first)
            self._merged = (self.base.astype(jnp.float32) + delta).astype(self.base.dtype)
        return self._merged

    @property
    def in_axis(self) -> int:
        return 1 if self.out_first else 0


def lora_delta(a: Any, b: Any, factor: float, shape: Sequence[int], out_first: bool) -> Any:
    """`factor * A @ B` (float32) in the layout of a kernel of `shape`."""
    # Scale the (fan_in, rank) factor, not the (fan_in, fan_out) product: one
    # pass less over a kernel-sized array in every forward and backward.
    delta = (a.astype(jnp.float32) * jnp.float32(factor)) @ b.astype(jnp.float32)
    if out_first:
        delta = delta.T
    return delta.reshape(tuple(shape))


def call_low_rank(fn: Callable[[list], Any], params: list, low_rank: dict[int, LowRank]) -> Any:
    """`fn(params)` with `params[i]` standing for the merged kernel of `low_rank[i]`."""
    abstract = [
        jax.ShapeDtypeStruct(low_rank[i].base.shape, low_rank[i].base.dtype) if i in low_rank else p
        for i, p in enumerate(params)
    ]
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(abstract)
    args = [low_rank.get(i, p) for i, p in enumerate(params)]
    leaves = _evaluate(closed.jaxpr, closed.consts, args)
    leaves = [v.merged() if isinstance(v, LowRank) else v for v in leaves]
    return jax.tree.unflatten(jax.tree.structure(out_shape), leaves)


def _evaluate(jaxpr: Any, consts: Sequence, args: Sequence) -> list:
    env: dict = {}

    def read(atom: Any) -> Any:
        return atom.val if isinstance(atom, jex_core.Literal) else env[atom]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        if not any(isinstance(v, LowRank) for v in values):
            outs = _bind(eqn, values)
        elif eqn.primitive.name == "dot_general" and (low := _low_rank_dot(eqn, values)) is not None:
            outs = [low]
        elif eqn.primitive.name in _JIT_PRIMITIVES:
            inner = eqn.params["jaxpr"]
            outs = _evaluate(inner.jaxpr, inner.consts, values)
        else:
            outs = _bind(eqn, [v.merged() if isinstance(v, LowRank) else v for v in values])
        for var, value in zip(eqn.outvars, outs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _bind(eqn: Any, values: list) -> list:
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns, bind_params = params if isinstance(params, tuple) else ([], params)
    context = getattr(getattr(eqn, "ctx", None), "manager", None)
    if context is not None:
        with context:
            out = eqn.primitive.bind(*subfuns, *values, **bind_params)
    else:
        out = eqn.primitive.bind(*subfuns, *values, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _low_rank_dot(eqn: Any, values: list) -> Any:
    """`x . W'` as `x . W + (x . A) . B`, or None when the dot is not a Dense one."""
    lhs, rhs = values
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    if lhs_batch or rhs_batch or isinstance(lhs, LowRank) == isinstance(rhs, LowRank):
        return None
    kernel, x = (rhs, lhs) if isinstance(rhs, LowRank) else (lhs, rhs)
    kernel_contract, x_contract = (rhs_contract, lhs_contract) if kernel is rhs else (lhs_contract, rhs_contract)
    if kernel.base.ndim != 2 or tuple(kernel_contract) != (kernel.in_axis,):
        return None
    global LOW_RANK_DOTS
    LOW_RANK_DOTS += 1
    operands = (x, kernel.base) if kernel is rhs else (kernel.base, x)
    out = eqn.primitive.bind(*operands, **eqn.params)
    x32, no_batch = x.astype(jnp.float32), ((), ())
    if kernel is rhs:  # x @ W': (x free..., out)
        low = jax.lax.dot_general(x32, kernel.a, ((tuple(x_contract), (0,)), no_batch))
        low = jax.lax.dot_general(low, kernel.b, (((low.ndim - 1,), (0,)), no_batch))
    else:  # W' @ x, contracting W's input axis: (out, x free...)
        low = jax.lax.dot_general(kernel.a, x32, (((0,), tuple(x_contract)), no_batch))
        low = jax.lax.dot_general(kernel.b, low, (((0,), (0,)), no_batch))
    return out + low.astype(out.dtype)
