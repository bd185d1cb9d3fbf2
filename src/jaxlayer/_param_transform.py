"""The params `call_fn` receives, computed from the variables a layer stores.

After `enable_lora` or `quantize`, a param leaf `W` is no longer handed to
`call_fn` as stored: LoRA adds `(alpha / rank) * A @ B` (reshaped to `W`'s
layout), int8 stores `W` as `int8` with a per-output-channel float scale.
`ParamTransform` maps the flat list of stored values (every param in the
params tree's order, then the extra variables: scales and adapters) to the
flat list of params `call_fn` sees. `Program` applies it inside the compiled
function, so every bridge and every export runs the same merge.

Layouts: a leaf's output axis is its last (Flax, Haiku, NNX, conv kernels
`(..., in, out)`) or its first (Equinox `Linear.weight` `(out, in)`, Equinox
conv `(out, in, ...)`). Everything else is the input (`fan_in`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._low_rank import LowRank

#: The quantization modes `JaxLayer.quantize` implements.
QUANTIZATION_MODES = ("int8",)


@dataclass(frozen=True)
class LeafForm:
    """How one stored param leaf becomes the param `call_fn` sees.

    `index`: its position among the params; `out_first`: its output axis is
    the first (else the last); `dtype`: what `call_fn` receives (the compute
    dtype for autocast floats); `scale`, `lora_a`, `lora_b`: positions of its
    extra variables in the flat list (None when absent); `factor`: `alpha /
    rank`.
    """

    index: int
    shape: tuple
    out_first: bool
    dtype: Any
    scale: int | None = None
    lora_a: int | None = None
    lora_b: int | None = None
    factor: float = 1.0


class ParamTransform:
    """Maps `stored params + extras` (flat) to the params `call_fn` sees."""

    def __init__(self, num_params: int, forms: Sequence[LeafForm]):
        self.num_params = num_params
        self.forms = list(forms)

    def has_lora(self) -> bool:
        return any(f.lora_a is not None and f.lora_b is not None for f in self.forms)

    def split(self, flat: Sequence[Any]) -> tuple[list, dict[int, LowRank]]:
        """Like calling it, but each adapted kernel as its `LowRank` parts
        (`_low_rank`), keyed by its index; its slot holds `W` alone."""
        params = list(flat[: self.num_params])
        low_rank: dict[int, LowRank] = {}
        for form in self.forms:
            value = params[form.index]
            if form.scale is not None:
                value = dequantize(value, flat[form.scale], form.out_first, form.dtype)
            if form.lora_a is not None and form.lora_b is not None:
                a = flat[form.lora_a].astype(jnp.float32) * jnp.float32(form.factor)
                b = flat[form.lora_b].astype(jnp.float32)
                low_rank[form.index] = LowRank(value, a, b, form.out_first)
            params[form.index] = value
        return params, low_rank

    def __call__(self, flat: Sequence[Any]) -> list:
        params, low_rank = self.split(flat)
        for index, parts in low_rank.items():
            params[index] = parts.merged()
        return params


def fans(shape: Sequence[int], out_first: bool) -> tuple[int, int]:
    """`(fan_in, fan_out)` of a kernel of `shape`."""
    shape = tuple(int(d) for d in shape)
    if out_first:
        return int(np.prod(shape[1:])), shape[0]
    return int(np.prod(shape[:-1])), shape[-1]


def _channel_shape(shape: Sequence[int], out_first: bool) -> tuple:
    """The scale's shape broadcast against the kernel: one value per output channel."""
    if out_first:
        return (shape[0],) + (1,) * (len(shape) - 1)
    return (1,) * (len(shape) - 1) + (shape[-1],)


def quantize_int8(w: Any, out_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax int8 per output channel: `(q int8, scale float32)`,
    with `w ~= q * scale` and `scale` of shape `(fan_out,)`."""
    w = np.asarray(w, dtype=np.float32)
    axes = tuple(range(1, w.ndim)) if out_first else tuple(range(w.ndim - 1))
    absmax = np.max(np.abs(w), axis=axes)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape(_channel_shape(w.shape, out_first))), -127, 127)
    return q.astype(np.int8), scale


def dequantize(q: Any, scale: Any, out_first: bool, dtype: Any) -> Any:
    """`q * scale` in `dtype`, the scale broadcast over the output axis."""
    scale = scale.astype(jnp.float32).reshape(_channel_shape(q.shape, out_first))
    return (q.astype(jnp.float32) * scale).astype(dtype)
