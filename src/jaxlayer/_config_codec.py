"""The codec of the layer's Keras config (what `get_config` writes, `from_config` reads).

Two things: the user's functions by registered name (checked at save time so
a bad save never produces a file that cannot load), and the layout of
`params` / `state` (nested dicts, lists, tuples, None, scalars, array
shapes/dtypes, and for portable saves any other PyTree node), so
`load_model` recreates the variables without calling `init_fn`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import keras
import numpy as np

from ._signature import describe
from ._variables import is_array_leaf, key_text


class NotRegisteredError(ValueError):
    """The layer's code is not registered, so it cannot be saved by reference."""


def serialize_function(fn: Callable | None, role: str, layer_name: str) -> Any:
    """Serializes a registered function; raises NotRegisteredError otherwise."""
    if fn is None:
        return None
    name = keras.saving.get_registered_name(fn)
    if keras.saving.get_registered_object(name) is not fn:
        raise NotRegisteredError(
            f"Cannot save JaxLayer `{layer_name}`: its `{role}` ({describe(fn)}) is "
            f"not registered with Keras, so `load_model` could not find it again. "
            f"Define it as a module-level function decorated with "
            f"`@keras.saving.register_keras_serializable(package=\"my_package\")` "
            f"(wrap lambdas, closures and Haiku/Flax transforms in such a "
            f"function), save it portably (`save_as=\"portable\"`), or save only "
            f"the weights with `model.save_weights(...)`."
        )
    return keras.saving.serialize_keras_object(fn)


def deserialize_function(config: Any) -> Callable | None:
    if config is None:
        return None
    return keras.saving.deserialize_keras_object(config)


class UnencodableTree(ValueError):
    """The tree holds a node type the config cannot describe."""


def encode_tree(tree: Any, dtypes: list, custom_nodes: bool = False) -> Any:
    """A JSON-able description of a PyTree; array leaves become shape/dtype records.

    `dtypes` gives the stored dtype of each array leaf in flattening order.
    With `custom_nodes`, nodes of other registered PyTree types (NamedTuples,
    Equinox modules, Flax FrozenDicts, ...) are recorded by type name and
    children, and decode as `SavedNode`s; otherwise they raise UnencodableTree.
    """
    dtype_iter = iter(dtypes)

    def encode(node: Any) -> Any:
        if node is None:
            return {"none": None}
        if is_array_leaf(node):
            return {"array": {"shape": list(np.shape(node)), "dtype": np.dtype(next(dtype_iter)).name}}
        if isinstance(node, (bool, int, float, str)):
            return {"value": node}
        if type(node) is dict and all(isinstance(k, str) for k in node):
            # JAX flattens dicts in sorted key order; keep that order here.
            return {"dict": {k: encode(node[k]) for k in sorted(node)}}
        if type(node) is list:
            return {"list": [encode(v) for v in node]}
        if type(node) is tuple:
            return {"tuple": [encode(v) for v in node]}
        if custom_nodes:
            return _encode_custom_node(node, encode)
        if type(node) is dict:
            raise UnencodableTree("dict with non-string keys")
        raise UnencodableTree(f"a `{type(node).__name__}` node")

    return encode(tree)


def _encode_custom_node(node: Any, encode: Callable) -> Any:
    children_with_keys, treedef = jax.tree_util.tree_flatten_with_path(
        node, is_leaf=lambda x: x is not node
    )
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        # A static leaf (a function, an enum, ...): the program has its value
        # baked in; the layout only needs to know a leaf is there.
        return {"opaque": type(node).__qualname__}
    children = []
    for path, child in children_with_keys:
        (key,) = path
        children.append([key_text(key), encode(child)])
    return {"node": {"type": type(node).__qualname__, "children": children}}


@jax.tree_util.register_pytree_with_keys_class
class SavedNode:
    """A PyTree node of a type the loading process may not have.

    It stands in for the original node (an Equinox module, a NamedTuple, a
    Flax FrozenDict, ...) in a portable layer's `params`/`state`: it keeps the
    node's children in their original order and under their original names,
    so variable names and weight order are unchanged. Children are read with
    `node["name"]` or `node.name`.
    """

    def __init__(self, type_name: str, keys: list[str], children: list) -> None:
        self.type_name = type_name
        self.keys = list(keys)
        self.children = list(children)

    def tree_flatten_with_keys(self) -> tuple[list, tuple[str, tuple[str, ...]]]:
        keys = [jax.tree_util.GetAttrKey(k) for k in self.keys]
        return list(zip(keys, self.children)), (self.type_name, tuple(self.keys))

    @classmethod
    def tree_unflatten(cls, aux: tuple[str, tuple[str, ...]], children: Any) -> SavedNode:
        type_name, keys = aux
        return cls(type_name, list(keys), list(children))

    def __getitem__(self, key: str) -> Any:
        try:
            return self.children[self.keys.index(str(key))]
        except ValueError:
            raise KeyError(f"{self.type_name} has no child {key!r}; it has {self.keys}") from None

    def __getattr__(self, name: str) -> Any:
        if name in ("type_name", "keys", "children"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(str(error)) from None

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={c!r}" for k, c in zip(self.keys, self.children))
        return f"SavedNode[{self.type_name}]({inner})"


class OpaqueLeaf:
    """Stands in for a static leaf (a function, an object) of a saved tree."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpaqueLeaf) and other.type_name == self.type_name

    def __hash__(self) -> int:
        return hash(self.type_name)

    def __repr__(self) -> str:
        return f"<saved {self.type_name}>"


def decode_tree(config: Any, make_array: Callable[[tuple, Any], Any] | None = None) -> Any:
    """Rebuilds a tree from `encode_tree`'s output.

    Array leaves become `make_array(shape, dtype)`, by default zero arrays.
    """
    make_array = make_array or (lambda shape, dtype: np.zeros(shape, dtype=dtype))

    def decode(config: Any) -> Any:
        ((kind, value),) = config.items()
        if kind == "none":
            return None
        if kind == "array":
            shape = tuple(None if d is None else int(d) for d in value["shape"])
            return make_array(shape, _dtype(value["dtype"]))
        if kind == "value":
            return value
        if kind == "dict":
            return {k: decode(v) for k, v in value.items()}
        if kind == "list":
            return [decode(v) for v in value]
        if kind == "tuple":
            return tuple(decode(v) for v in value)
        if kind == "opaque":
            return OpaqueLeaf(value)
        if kind == "node":
            keys = [k for k, _ in value["children"]]
            return SavedNode(value["type"], keys, [decode(v) for _, v in value["children"]])
        raise ValueError(f"Unknown tree record `{kind}` in a saved JaxLayer config.")

    return decode(config)


def _dtype(name: str) -> np.dtype:
    # jax.numpy knows the ml_dtypes names (bfloat16, float8_*) as well.
    return jax.numpy.dtype(name)
