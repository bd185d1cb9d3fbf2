"""The model as one pure JAX function over flat lists of arrays, and the
abstract inputs it is traced with (shape inference, the input record a
portable save exports for).

`Program` binds `call_fn`'s arguments by name, rebuilds the `params` / `state`
PyTrees from flat leaf lists, checks what a stateful `call_fn` returns, and
keeps one `jax.jit` per training flag. Every backend bridge runs this same
function; only how its inputs and outputs cross into JAX differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _low_rank as low_rank
from ._batch import symbolic_dims
from ._param_transform import ParamTransform
from ._signature import FunctionSignature, describe
from ._variables import TreeLayout, check_leaf, describe_path


class Program:
    """`call_fn` as `fn(params, state, rng, inputs, training) -> (outputs, new_state)`.

    `params` and `state` are flat lists of arrays in the order of the layouts'
    array leaves; `new_state` is returned the same way (empty when `call_fn`
    takes no `state`). With a `transform` (LoRA adapters, int8 kernels: see
    `_param_transform`), `params` is the stored params followed by the extra
    variables, and the transform computes what `call_fn` receives.
    """

    def __init__(
        self,
        signature: FunctionSignature,
        params_layout: TreeLayout,
        state_layout: TreeLayout,
        state_shapes: Sequence[tuple],
        state_dtypes: Sequence[Any],
        transform: ParamTransform | None = None,
        frozen: Sequence[bool] | None = None,
    ):
        self.signature = signature
        self.params_layout = params_layout
        self.state_layout = state_layout
        self.state_shapes = [tuple(s) for s in state_shapes]
        self.state_dtypes = [np.dtype(d) for d in state_dtypes]
        self.trace_count = 0  # how many times JAX traced the function (tests use it)
        # Platforms a bridge that serializes the program (TensorFlow's jax2tf)
        # compiles it for; None: the current one. Set by the layer.
        self.native_serialization_platforms: Sequence[str] | None = None
        self.transform = transform
        # Per flat param: never differentiated (the base weights LoRA froze);
        # bridges that differentiate every float param otherwise skip them.
        self.frozen = None if frozen is None else list(frozen)
        self._jitted: dict[bool, Callable] = {}
        self._plain: Program | None = None

    def plain(self) -> Program:
        """This program without its transform: `call_fn` on the params it
        receives (what a portable save exports)."""
        if self.transform is None:
            return self
        if self._plain is None:
            self._plain = Program(
                self.signature, self.params_layout, self.state_layout, self.state_shapes, self.state_dtypes
            )
            self._plain.native_serialization_platforms = self.native_serialization_platforms
        return self._plain

    def __call__(self, params: Sequence, state: Sequence, rng: Any, inputs: Any, training: bool):
        self.trace_count += 1
        if self.transform is not None and self.transform.has_lora() and low_rank.ENABLED:
            plain, parts = self.transform.split(params)
            try:
                return low_rank.call_low_rank(
                    lambda p: self._call_fn(p, state, rng, inputs, training), plain, parts
                )
            except Exception:  # noqa: BLE001 - the merged kernels below give the same values or error
                low_rank.FALLBACKS += 1
        if self.transform is not None:
            params = self.transform(params)
        return self._call_fn(params, state, rng, inputs, training)

    def _call_fn(self, params: Sequence, state: Sequence, rng: Any, inputs: Any, training: bool):
        """`call_fn` on the params it receives, its result checked and split."""
        values = {
            "params": self.params_layout.rebuild(params),
            "state": self.state_layout.rebuild(state),
            "rng": rng,
            "inputs": inputs,
            "training": training,
        }
        result = self.signature(**values)
        if not self.signature.takes("state"):
            return result, []
        return self._split_stateful_result(result)

    def _split_stateful_result(self, result: Any):
        fn = describe(self.signature.fn)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            kind = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
            raise ValueError(
                f"`call_fn` ({fn}) takes a `state` argument, so it must return a "
                f"tuple `(outputs, new_state)`; it returned {kind}. Return the "
                f"new state as the second element (return the `state` it received "
                f"if nothing changed), or remove the `state` argument."
            )
        outputs, new_state = result
        fix = (
            f"`call_fn` ({fn}) must return a new state with the same structure, "
            f"shapes and dtypes as the initial state (cast with `.astype(...)` "
            f"where needed)."
        )
        arrays = self.state_layout.match(new_state, "The new state returned by `call_fn`", fix)
        for path, leaf, shape, dtype in zip(self.state_layout.array_paths, arrays, self.state_shapes, self.state_dtypes):
            leaf_dtype = getattr(leaf, "dtype", None)
            if leaf_dtype is None or not hasattr(leaf, "shape"):
                raise ValueError(
                    f"The new state returned by `call_fn`: the leaf "
                    f"`state{describe_path(path)}` is {leaf!r}, not an array. {fix}"
                )
            check_leaf(path, "state", leaf.shape, leaf_dtype, shape, dtype, "The new state returned by `call_fn`", fix)
        return outputs, arrays

    def jitted(self, training: bool) -> Callable:
        """The compiled function for one training flag, created once."""
        fn = self._jitted.get(training)
        if fn is None:
            fn = jax.jit(functools.partial(self, training=training))
            self._jitted[training] = fn
        return fn

    def output_shapes(self, params, state, rng, inputs, training: bool):
        """Output and new-state shapes for abstract inputs whose unknown dims are None.

        Unknown dimensions are first tried as symbolic dimensions (so any
        output dimension that depends on them comes back as None); when the
        model cannot be traced symbolically (Python branching on a shape),
        two concrete sizes are tried and dimensions that differ become None.
        """
        fn = functools.partial(self, training=training)
        try:
            symbolic_inputs = with_symbolic_dims(inputs)
            out = jax.eval_shape(fn, params, state, rng, symbolic_inputs)
            return jax.tree.map(_symbolic_to_none, out)
        except Exception as symbolic_error:  # noqa: BLE001 - fall back below
            if not _has_unknown_dims(inputs):
                raise
            try:
                out_a = jax.eval_shape(fn, params, state, rng, _with_concrete_dims(inputs, 2))
                out_b = jax.eval_shape(fn, params, state, rng, _with_concrete_dims(inputs, 3))
            except Exception:
                raise symbolic_error from None
            return jax.tree.map(_merge_dims, out_a, out_b)


class AbstractInput:
    """A shape with None for unknown dimensions, and a dtype; a JAX PyTree leaf."""

    def __init__(self, shape: Sequence, dtype: Any):
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"AbstractInput({self.shape}, {self.dtype.name})"


def is_abstract(x: Any) -> bool:
    """Whether `x` is an `AbstractInput` (the `is_leaf` of trees holding them)."""
    return isinstance(x, AbstractInput)


def _has_unknown_dims(inputs: Any) -> bool:
    leaves = jax.tree.leaves(inputs, is_leaf=is_abstract)
    return any(d is None for leaf in leaves if is_abstract(leaf) for d in leaf.shape)


def with_symbolic_dims(inputs: Any, open_batch: bool = False) -> Any:
    """`ShapeDtypeStruct`s for a tree of `AbstractInput`s, with symbolic dims
    where `_batch`'s rule puts them (the batch, shared; unknown dims, each its own).
    """
    leaves, treedef = jax.tree.flatten(inputs, is_leaf=is_abstract)
    abstract = [leaf for leaf in leaves if is_abstract(leaf)]
    dims = iter(symbolic_dims([leaf.shape for leaf in abstract], open_batch))
    scope = jax.export.SymbolicScope()
    out = []
    for leaf in leaves:
        if not is_abstract(leaf):
            out.append(leaf)
            continue
        text = ", ".join(next(dims))
        shape = jax.export.symbolic_shape(text, scope=scope) if text else ()
        out.append(jax.ShapeDtypeStruct(shape, leaf.dtype))
    return jax.tree.unflatten(treedef, out)


def _with_concrete_dims(inputs: Any, size: int) -> Any:
    def concrete(leaf):
        if not is_abstract(leaf):
            return leaf
        return jax.ShapeDtypeStruct(tuple(size if d is None else d for d in leaf.shape), leaf.dtype)

    return jax.tree.map(concrete, inputs, is_leaf=is_abstract)


def _symbolic_to_none(leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct | AbstractInput:
    shape = tuple(d if isinstance(d, int) else None for d in leaf.shape)
    return AbstractInput(shape, leaf.dtype)


def _merge_dims(a: jax.ShapeDtypeStruct, b: jax.ShapeDtypeStruct) -> AbstractInput:
    shape = tuple(x if x == y else None for x, y in zip(a.shape, b.shape))
    return AbstractInput(shape, a.dtype)


def placeholders(inputs: Any) -> Any:
    """Concrete `ones` arrays for abstract inputs; unknown dimensions become 1."""

    def make(leaf):
        if not is_abstract(leaf):
            return leaf
        return jnp.ones(tuple(1 if d is None else d for d in leaf.shape), dtype=leaf.dtype)

    return jax.tree.map(make, inputs, is_leaf=is_abstract)


def is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(d is None or isinstance(d, int) for d in x)


def shape_tree_from_keras(input_shape: Any) -> Any:
    """Normalises Keras's shape structures (lists of ints, TrackedList...) to tuples."""
    if input_shape is None:
        raise ValueError("JaxLayer.build needs an input shape.")
    if _is_shape_like(input_shape):
        return tuple(None if d is None else int(d) for d in input_shape)
    if isinstance(input_shape, dict):
        return {k: shape_tree_from_keras(v) for k, v in input_shape.items()}
    if isinstance(input_shape, (list, tuple)):
        converted = [shape_tree_from_keras(v) for v in input_shape]
        if hasattr(input_shape, "_fields"):
            return type(input_shape)(*converted)
        return type(input_shape)(converted) if isinstance(input_shape, tuple) else converted
    raise ValueError(f"Cannot read an input shape from {input_shape!r}.")


def _is_shape_like(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and all(d is None or isinstance(d, (int, np.integer)) for d in x)


def record_inputs(old: Any, inputs: Any, dtype_of: Callable[[Any], Any]) -> Any:
    """The inputs' structure, shapes and dtypes as a tree of `AbstractInput`,
    merged with the `old` record: dimensions that differ become unknown (None).

    Returns `old` when `inputs` are not array-like; the latest structure wins
    when the structure changed.
    """

    def record(x):
        shape = tuple(None if d is None else int(d) for d in x.shape)
        return AbstractInput(shape, jnp.dtype(dtype_of(x)))

    try:
        new = jax.tree.map(record, inputs)
    except Exception:  # noqa: BLE001 - not array-like: nothing to export from
        return old
    if old is None:
        return new
    try:
        return jax.tree.map(_merge_records, old, new, is_leaf=is_abstract)
    except ValueError:  # a different structure: the latest wins
        return new


def _merge_records(a: AbstractInput, b: AbstractInput) -> AbstractInput:
    if len(a.shape) != len(b.shape) or a.dtype != b.dtype:
        return b
    shape = tuple(x if x == y else None for x, y in zip(a.shape, b.shape))
    return AbstractInput(shape, np.dtype(a.dtype))
