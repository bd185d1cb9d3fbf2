"""Which input dimension is the batch: one rule for shape inference, the
tensorflow bridge's conversions and portable exports.

An input leads with the batch dimension when it has at least one dimension
and its first dimension is unknown or equal to the first input's first
dimension. Every batched input shares one symbolic dimension, `batch`; any
other unknown dimension gets a symbol of its own (`d0`, `d1`, ...), and
known dimensions stay as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def batched(shapes: Sequence[tuple]) -> list[bool]:
    """For each input shape (None for unknown dims), whether it leads with the batch."""
    shapes = [tuple(s) for s in shapes]
    first = next((s[0] for s in shapes if s), None)
    return [bool(s) and (s[0] is None or s[0] == first) for s in shapes]


def symbolic_dims(shapes: Sequence[tuple], open_batch: bool) -> list[list[str]]:
    """Each input's dimensions as `jax.export` shape-polymorphism terms.

    `open_batch=True` (exports, the tensorflow bridge) makes the batch
    dimension symbolic even where it is known; `False` (shape inference)
    keeps known dimensions known.
    """
    names = (f"d{i}" for i in itertools.count())
    result = []
    for shape, is_batched in zip(shapes, batched(shapes)):
        dims = []
        for axis, dim in enumerate(shape):
            if axis == 0 and is_batched and (dim is None or open_batch):
                dims.append("batch")
            elif dim is None:
                dims.append(next(names))
            else:
                dims.append(str(dim))
        result.append(dims)
    return result
