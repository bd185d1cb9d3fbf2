"""What the layer writes into its Keras config.

Two things: the user's functions (which must be registered Keras
serializables, checked at save time so a bad save never produces a file that
cannot load), and the layout of `params` / `state` (nested dicts, lists,
tuples, None, scalars, and array shapes/dtypes), so `load_model` recreates the
variables without calling `init_fn` and without the original `params`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import keras
import numpy as np

from ._signature import describe
from ._variables import is_array_leaf


def serialize_function(fn: Callable | None, role: str, layer_name: str) -> Any:
    """Serializes a registered function; raises a fix-stating error otherwise."""
    if fn is None:
        return None
    name = keras.saving.get_registered_name(fn)
    if keras.saving.get_registered_object(name) is not fn:
        raise ValueError(
            f"Cannot save JaxLayer `{layer_name}`: its `{role}` ({describe(fn)}) is "
            f"not registered with Keras, so `load_model` could not find it again. "
            f"Define it as a module-level function decorated with "
            f"`@keras.saving.register_keras_serializable(package=\"my_package\")` "
            f"(wrap lambdas, closures and Haiku/Flax transforms in such a "
            f"function), or save only the weights with `model.save_weights(...)`."
        )
    return keras.saving.serialize_keras_object(fn)


def deserialize_function(config: Any) -> Callable | None:
    if config is None:
        return None
    return keras.saving.deserialize_keras_object(config)


class UnencodableTree(ValueError):
    """The tree holds a node type the config cannot describe."""


def encode_tree(tree: Any, dtypes: list) -> Any:
    """A JSON-able description of a PyTree; array leaves become shape/dtype records.

    `dtypes` gives the stored dtype of each array leaf in flattening order.
    """
    dtype_iter = iter(dtypes)

    def encode(node: Any) -> Any:
        if node is None:
            return {"none": None}
        if is_array_leaf(node):
            return {"array": {"shape": list(node.shape), "dtype": np.dtype(next(dtype_iter)).name}}
        if isinstance(node, (bool, int, float, str)):
            return {"value": node}
        if type(node) is dict:
            if not all(isinstance(k, str) for k in node):
                raise UnencodableTree("dict with non-string keys")
            # JAX flattens dicts in sorted key order; keep that order here.
            return {"dict": {k: encode(node[k]) for k in sorted(node)}}
        if type(node) is list:
            return {"list": [encode(v) for v in node]}
        if type(node) is tuple:
            return {"tuple": [encode(v) for v in node]}
        raise UnencodableTree(f"a `{type(node).__name__}` node")

    return encode(tree)


def decode_tree(config: Any) -> Any:
    """Rebuilds a tree from `encode_tree`'s output, with zero arrays at array leaves."""
    (kind, value), = config.items()
    if kind == "none":
        return None
    if kind == "array":
        return np.zeros(tuple(value["shape"]), dtype=_dtype(value["dtype"]))
    if kind == "value":
        return value
    if kind == "dict":
        return {k: decode_tree(v) for k, v in value.items()}
    if kind == "list":
        return [decode_tree(v) for v in value]
    if kind == "tuple":
        return tuple(decode_tree(v) for v in value)
    raise ValueError(f"Unknown tree record `{kind}` in a saved JaxLayer config.")


def _dtype(name: str) -> np.dtype:
    # jax.numpy knows the ml_dtypes names (bfloat16, float8_*) as well.
    return jax.numpy.dtype(name)
