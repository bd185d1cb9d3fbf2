"""PyTree <-> Keras variables: which leaves are arrays, their readable names,
their dtypes, and structure / shape / dtype checks for trees coming back in
(`set_params` / `set_state`, a stateful `call_fn`'s new state).

A `TreeLayout` remembers one PyTree (the model's `params` or `state`): its tree
definition, which leaves are arrays (held as Keras variables) and which are
static (None, strings and other objects; handed to `call_fn` unchanged).
As in keras.layers.JaxLayer, Python `bool` / `int` / `float` leaves are
values, not configuration: they become scalar variables (`as_array`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import keras
import numpy as np

from ._dtypes import canonical_dtype

# Leaves of these kinds are configuration, never variables.
_STATIC_SCALARS = (complex, str, bytes)
# Python numbers become scalar variables of these dtypes (floats then follow
# the layer's dtype policy), as keras.layers.JaxLayer makes them.
_PYTHON_NUMBER_DTYPES = ((bool, np.dtype("bool")), (int, np.dtype("int32")), (float, np.dtype("float32")))


def is_python_number(leaf: Any) -> bool:
    return isinstance(leaf, (bool, int, float))


def as_array(leaf: Any) -> Any:
    """A Python bool/int/float as a NumPy scalar array; anything else unchanged."""
    for kind, dtype in _PYTHON_NUMBER_DTYPES:
        if isinstance(leaf, kind):
            return np.asarray(leaf, dtype=dtype)
    return leaf


def is_array_leaf(leaf: Any) -> bool:
    """True for numeric array-likes and Python numbers: they become Keras variables."""
    if is_python_number(leaf):
        return True
    if leaf is None or isinstance(leaf, _STATIC_SCALARS):
        return False
    dtype = getattr(leaf, "dtype", None)
    shape = getattr(leaf, "shape", None)
    if dtype is None or shape is None:
        return False
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        # Backend dtypes (tf.DType, torch.dtype) are numeric when they get here.
        return True
    # bfloat16 and the float8 types (ml_dtypes) have NumPy kind "V".
    return kind in "biufc" or jax.numpy.issubdtype(np.dtype(dtype), jax.numpy.floating)


def key_text(key: Any) -> str:
    """A PyTree path entry as text: a dict key, an attribute name or an index."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_name(path: Sequence[Any], root: str) -> str:
    """A Keras-legal variable name for a PyTree path.

    Dict keys, attribute names and sequence indices are joined with `.`; `/`
    (Haiku's module separator, which Keras forbids in names) becomes `.` too,
    and Haiku's `~` segments are dropped, so `{"mlp/~/linear_0": {"w": ...}}`
    gives `mlp.linear_0.w`. Any other character that TensorFlow refuses in a
    scope name (optimizers on that backend name slots after variables)
    becomes `_`.
    """
    parts = [key_text(k) for k in path]
    if not parts:
        return root
    text = ".".join(part if part else "_" for part in parts)
    segments = [segment for segment in text.replace("/", ".").split(".") if segment != "~"]
    text = ".".join(segment if segment else "_" for segment in segments) or "_"
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)


def unique_names(names: Sequence[str], taken: set[str]) -> list[str]:
    """Makes `names` unique (against each other and `taken`) with `_1`, `_2` suffixes."""
    result = []
    for name in names:
        candidate, counter = name, 1
        while candidate in taken:
            candidate = f"{name}_{counter}"
            counter += 1
        taken.add(candidate)
        result.append(candidate)
    return result


def describe_path(path: Sequence[Any]) -> str:
    """The path as the user would index it, e.g. `['dense']['kernel']`."""
    return jax.tree_util.keystr(tuple(path)) or "<root>"


class TreeLayout:
    """Splits a PyTree into array leaves (variables) and static leaves.

    Args:
        tree: the PyTree (`params` or `state`), or None.
        root: `"params"` or `"state"`; names the root leaf and error messages.
    """

    def __init__(self, tree: Any, root: str):
        leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        self.root = root
        self.treedef = treedef
        self.leaf_paths = [path for path, _ in leaves_with_paths]
        self.is_array = [is_array_leaf(leaf) for _, leaf in leaves_with_paths]
        self.statics = [
            None if array else leaf
            for (_, leaf), array in zip(leaves_with_paths, self.is_array)
        ]
        self.array_paths = [p for p, a in zip(self.leaf_paths, self.is_array) if a]

    @property
    def num_arrays(self) -> int:
        return len(self.array_paths)

    def names(self) -> list[str]:
        return [path_name(path, self.root) for path in self.array_paths]

    def array_leaves(self, tree: Any) -> list:
        """The array leaves of the layout's own tree (no checks)."""
        leaves = self.treedef.flatten_up_to(tree)
        return [leaf for leaf, array in zip(leaves, self.is_array) if array]

    def rebuild(self, arrays: Sequence[Any]) -> Any:
        """The tree with `arrays` at the array leaves and the static leaves as kept."""
        remaining = iter(arrays)
        leaves = [next(remaining) if array else static for array, static in zip(self.is_array, self.statics)]
        return self.treedef.unflatten(leaves)

    def match(self, tree: Any, what: str, fix: str) -> list:
        """Checks `tree` has this layout's structure; returns its array leaves.

        Static leaves must be equal; array leaves are returned for the caller
        to check shapes and dtypes.
        """
        try:
            leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        except Exception as error:  # custom nodes can fail to flatten
            raise ValueError(f"{what} could not be flattened as a PyTree: {error}. {fix}") from None
        if treedef != self.treedef:
            expected = {describe_path(p) for p in self.leaf_paths}
            received = {describe_path(p) for p, _ in leaves_with_paths}
            missing = sorted(expected - received)
            extra = sorted(received - expected)
            detail = []
            if missing:
                detail.append(f"missing leaves {', '.join(missing[:5])}")
            if extra:
                detail.append(f"unexpected leaves {', '.join(extra[:5])}")
            if not detail:
                detail.append(f"expected structure {self.treedef}, received {treedef}")
            raise ValueError(
                f"{what} does not have the structure of the layer's `{self.root}`: "
                f"{'; '.join(detail)}. {fix}"
            )
        arrays = []
        for (path, leaf), array, static in zip(leaves_with_paths, self.is_array, self.statics):
            if array:
                arrays.append(leaf)
            elif leaf is not static and not _static_equal(leaf, static):
                raise ValueError(
                    f"{what} has {leaf!r} at `{self.root}{describe_path(path)}`, where "
                    f"the layer's `{self.root}` holds the non-array leaf {static!r}. "
                    f"Non-array leaves are configuration and cannot change. {fix}"
                )
        return arrays


def _static_equal(a: Any, b: Any) -> bool:
    if is_array_leaf(a):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def check_leaf(
    path: Sequence[Any],
    root: str,
    shape: tuple,
    dtype: Any,
    expected_shape: tuple,
    expected_dtype: Any,
    what: str,
    fix: str,
) -> None:
    """Raises a ValueError naming the leaf when shape or dtype differ."""
    where = f"`{root}{describe_path(path)}`"
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{what}: the leaf {where} has shape {tuple(shape)}, expected "
            f"{tuple(expected_shape)}. {fix}"
        )
    if np.dtype(dtype) != np.dtype(expected_dtype):
        raise ValueError(
            f"{what}: the leaf {where} has dtype {np.dtype(dtype).name}, expected "
            f"{np.dtype(expected_dtype).name}. {fix}"
        )


def assign_tree(layer_name: str, built: bool, tree: Any, layout: TreeLayout, variables: list, method: str) -> None:
    """`set_params` / `set_state`: checks every leaf of `tree`, then assigns them all.

    Nothing is assigned unless the structure, the static leaves and every
    array's shape and dtype match `layout` and `variables`.
    """
    if not built:
        raise ValueError(
            f"`{method}` was called on JaxLayer `{layer_name}` before it was "
            f"built. Call the layer once (or `layer.build(input_shape)`) first."
        )
    fix = f"Pass a tree shaped like `layer.get_{layout.root}()`. Nothing was changed."
    what = f"The tree passed to `{method}`"
    arrays = layout.match(tree, what, fix)
    # A Python number where the variable is a scalar takes its dtype.
    arrays = [
        np.asarray(leaf, dtype=canonical_dtype(v.dtype)) if is_python_number(leaf) else leaf
        for leaf, v in zip(arrays, variables)
    ]
    for path, leaf, variable in zip(layout.array_paths, arrays, variables):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise ValueError(
                f"`{method}` received a tree that has a {type(leaf).__name__} at "
                f"`{layout.root}{jax.tree_util.keystr(tuple(path))}`, expected an array. {fix}"
            )
        check_leaf(
            path,
            layout.root,
            leaf.shape,
            keras.backend.standardize_dtype(leaf.dtype),
            variable.shape,
            keras.backend.standardize_dtype(variable.dtype),
            what,
            fix,
        )
    for leaf, variable in zip(arrays, variables):
        variable.assign(leaf)


def released_one_by_one(leaves: list):
    """Yields the leaves, dropping the list's reference to each as it is taken
    (a build never holds two copies of the parameters)."""
    for index in range(len(leaves)):
        leaf, leaves[index] = leaves[index], None
        yield leaf
