"""Bringing a layer's values to host NumPy arrays, across processes too."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import jax
import keras
import numpy as np


def is_spread(value: Any) -> bool:
    """Whether `value` is a JAX array with shards on other processes' devices."""
    return isinstance(value, jax.Array) and not value.is_fully_addressable


def to_host(tree: Any) -> Any:
    """The arrays of `tree` as NumPy arrays holding their full (global) values.

    `layer.get_params()` / `get_state()` return JAX arrays laid out like the
    layer's variables. Under `jax.distributed` an array sharded over devices of
    several processes is a global array that no single process can read; this
    gathers it. Gathering is a collective: with several processes, every
    process must call `to_host` on the same tree, in the same order. Keras
    variables and tensors of any backend are converted too; other leaves
    (None, Python numbers, strings) are returned as they are.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxlayer import JaxLayer, to_host
        >>> layer = JaxLayer(lambda params, inputs: inputs * params["w"],
        ...                  params={"w": jnp.ones((2,))})
        >>> to_host(layer.get_params())
        {'w': array([1., 1.], dtype=float32)}
    """
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [leaf.value if isinstance(leaf, keras.Variable) else leaf for leaf in leaves]
    spread = [i for i, leaf in enumerate(leaves) if is_spread(leaf)]
    if spread:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather([leaves[i] for i in spread], tiled=True)
        for i, value in zip(spread, gathered):
            leaves[i] = np.asarray(value)
    host = [_host_value(leaf) for leaf in leaves]
    return jax.tree.unflatten(treedef, host)


def _host_value(leaf: Any) -> Any:
    if isinstance(leaf, np.ndarray):
        return leaf
    if isinstance(leaf, jax.Array):
        return np.asarray(leaf)
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return keras.ops.convert_to_numpy(leaf)
    return leaf


@contextlib.contextmanager
def replicated_variables(model: Any) -> Iterator[None]:
    """Inside the block, variables split across processes are whole on every device.

    Keras saves a variable by reading its value, which no process can do for
    a variable sharded over devices of several processes (a `LayoutMap`
    whose mesh axis spans processes). Inside this block every such variable
    of `model` and of its optimizer holds a copy replicated on all of its
    devices, so `model.save`, `save_weights` and `ModelCheckpoint` work; on
    exit the sharded arrays are put back. Enter it on every process (the
    copy is a collective), and only for saving: it holds a whole copy of
    each split variable on every device. Variables every process can read
    already are left alone, and so is everything on one process.

    Example (every process runs this):

        path = "model.keras" if jax.process_index() == 0 else f"/tmp/scratch-{jax.process_index()}.keras"
        with jaxlayer.replicated_variables(model):
            model.save(path)
    """
    variables = list(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    kept: list = []
    seen: set = set()
    try:
        for variable in variables:
            value = getattr(variable, "_value", None)
            if id(variable) in seen or not is_spread(value):
                continue
            value = cast(jax.Array, value)
            seen.add(id(variable))
            whole = jax.sharding.NamedSharding(_mesh_of(value.sharding), jax.sharding.PartitionSpec())
            kept.append((variable, value))
            variable._value = jax.device_put(value, whole)
        yield
    finally:
        for variable, value in kept:
            variable._value = value


def _mesh_of(sharding: Any) -> jax.sharding.Mesh:
    mesh = getattr(sharding, "mesh", None)
    if isinstance(mesh, jax.sharding.Mesh):
        return mesh
    devices = sorted(sharding.device_set, key=lambda d: d.id)
    return jax.sharding.Mesh(np.array(devices), ("devices",))
