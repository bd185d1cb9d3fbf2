"""Checkpoint files: recognising a format, reading names/shapes/dtypes before
any array, reading the arrays, and writing each format.

A source (a path or a tree in memory) becomes a `Source`: `entries` maps each
leaf's name (its path written as `_variables.path_name` writes variable
names) to its shape and dtype, and `read` returns the arrays asked for, cast
to the dtypes asked for. Orbax reads its metadata first and restores only
the asked-for arrays, each straight into the sharding it is given; the
single-file formats are read whole (they are one file on one host).

Formats and the tools that write them:

- Orbax directory: `ocp.StandardCheckpointer` / `PyTreeCheckpointer`, or one
  step of a `CheckpointManager` (the step directory, with one item in it);
- `.msgpack`: `flax.serialization.to_bytes` / `msgpack_serialize` (needs flax);
- `.safetensors`: `safetensors.numpy` / `safetensors.flax` (flat keys);
- `.npz`: `np.savez` (flat keys);
- `.eqx`: `eqx.tree_serialise_leaves` (needs the layer's own module as template).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any, cast

import jax
import keras
import numpy as np

from ._variables import is_array_leaf, key_text, path_name

#: Format names `save_checkpoint(format=)` takes, by the file suffix that implies each.
SUFFIXES = {".msgpack": "msgpack", ".safetensors": "safetensors", ".npz": "npz", ".eqx": "eqx"}
FORMATS = ("orbax", *SUFFIXES.values())


def import_for_format(module: str, what: str, extra: str = "checkpoints") -> Any:
    """Imports `module`, or raises an ImportError naming the pip extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{what} needs `{module}`, which could not be imported ({error}). Install it "
            f'with `pip install "jaxlayer[{extra}]"`.'
        ) from error


class Source:
    """A checkpoint's leaves by name: shapes and dtypes now, arrays on `read`."""

    def __init__(self, description: str, entries: dict[str, tuple[tuple, np.dtype]]):
        self.description = description
        self.entries = entries

    def read(self, wanted: dict[str, tuple[np.dtype, Any]]) -> dict[str, Any]:
        """The arrays named in `wanted` ({name: (dtype, sharding or None)}), cast.

        Each returned array is new (never an array the caller handed in).
        """
        raise NotImplementedError


# ------------------------------------------------------------------ trees


def _is_named_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _is_union(tree: Any) -> bool:
    """A plain tuple/list of trees (Haiku's `(params, state)`): matched as their union."""
    return (
        isinstance(tree, (list, tuple))
        and not _is_named_tuple(tree)
        and len(tree) > 0
        and all(not is_array_leaf(part) and part is not None for part in tree)
    )


def named_leaves(tree: Any, is_leaf: Callable[[Any], bool] = is_array_leaf) -> dict[str, tuple]:
    """{name: (path, leaf)} for the leaves `is_leaf` accepts, in a tree or a union of trees.

    The name is the path inside its own tree (`path_name`); the path is the
    full one, through the union's index.
    """
    parts = list(enumerate(tree)) if _is_union(tree) else [(None, tree)]
    named: dict[str, tuple] = {}
    for index, part in parts:
        prefix = () if index is None else (jax.tree_util.SequenceKey(index),)
        for path, leaf in jax.tree_util.tree_flatten_with_path(part, is_leaf=is_leaf)[0]:
            if not is_leaf(leaf):
                continue
            name = path_name(path, "_")
            if name in named:
                raise ValueError(
                    f"`load_checkpoint`: the source has two leaves named `{name}` (a tuple of "
                    f"trees is matched as their union). Pass one tree, or rename one with "
                    f"`rename=`."
                )
            named[name] = (prefix + tuple(path), leaf)
    return named


def _shape_dtype(leaf: Any) -> tuple[tuple, np.dtype]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:  # a Python number
        return (), np.asarray(leaf).dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = np.dtype(keras.backend.standardize_dtype(dtype))
    return tuple(int(d) for d in leaf.shape), dtype


def _host_copy(leaf: Any, dtype: np.dtype) -> np.ndarray:
    if not isinstance(leaf, (np.ndarray, np.generic, jax.Array, int, float, bool)):
        leaf = keras.ops.convert_to_numpy(leaf)
    array = np.array(leaf)  # always a copy: the caller's arrays stay theirs
    return array if array.dtype == dtype else array.astype(dtype)


class TreeSource(Source):
    """A PyTree in memory (dicts, lists, NamedTuples, FrozenDict, nnx.State, modules)."""

    def __init__(self, tree: Any, description: str = "the tree passed in"):
        self._leaves = {n: leaf for n, (_, leaf) in named_leaves(_plain_nnx(tree)).items()}
        super().__init__(description, {n: _shape_dtype(leaf) for n, leaf in self._leaves.items()})

    def read(self, wanted):
        return {name: _host_copy(self._leaves[name], dtype) for name, (dtype, _) in wanted.items()}


def _plain_nnx(tree: Any) -> Any:
    """An `nnx.State` as its pure dict (its leaves are Variable states)."""
    to_pure = getattr(tree, "to_pure_dict", None)
    return to_pure() if callable(to_pure) else tree


class FlatSource(Source):
    """A flat {key: array} file (safetensors, npz) read whole."""

    def __init__(self, description: str, arrays: Mapping[str, Any]):
        self._arrays = {path_name([key], "_"): value for key, value in arrays.items()}
        if len(self._arrays) != len(arrays):
            raise ValueError(f"{description} has keys that differ only in separators.")
        super().__init__(description, {n: _shape_dtype(a) for n, a in self._arrays.items()})

    def read(self, wanted):
        return {name: _host_copy(self._arrays[name], dtype) for name, (dtype, _) in wanted.items()}


# ------------------------------------------------------------------ orbax


def _orbax_item_directory(path: str) -> str:
    """The directory holding one PyTree item, from an item or a step directory."""
    names = set(os.listdir(path))
    if "_METADATA" in names or "manifest.ocdbt" in names:
        return path
    items = [n for n in sorted(names) if os.path.isfile(os.path.join(path, n, "_METADATA"))]
    if len(items) == 1:
        return os.path.join(path, items[0])
    steps = [n for n in sorted(names) if n.isdigit() and os.path.isdir(os.path.join(path, n))]
    if steps:
        raise ValueError(
            f"`{path}` looks like a CheckpointManager directory with steps {', '.join(steps)}: "
            f"pass one step's directory, e.g. `{os.path.join(path, steps[-1])}`."
        )
    if items:
        raise ValueError(
            f"The Orbax step `{path}` holds several items ({', '.join(items)}): pass the "
            f"item's directory, e.g. `{os.path.join(path, items[0])}`."
        )
    raise ValueError(
        f"`{path}` is a directory but not an Orbax checkpoint (no `_METADATA` file). Pass "
        f"an Orbax checkpoint directory or a .msgpack, .safetensors, .npz or .eqx file."
    )


class OrbaxSource(Source):
    """An Orbax PyTree checkpoint: metadata first, then a partial, sharded restore."""

    def __init__(self, path: str):
        self._ocp = import_for_format("orbax.checkpoint", "Reading an Orbax checkpoint")
        self._path = os.path.abspath(_orbax_item_directory(path))
        metadata = self._ocp.PyTreeCheckpointer().metadata(self._path)
        tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None)
        if tree is None:  # older Orbax: the metadata is the tree itself
            tree = metadata
        self._tree = plain_tree(tree, is_leaf=_is_array_metadata)
        named = named_leaves(self._tree, _is_array_metadata)
        self._paths = {name: path for name, (path, _) in named.items()}
        entries = {
            name: (tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype))
            for name, (_, leaf) in named.items()
        }
        super().__init__(f"the Orbax checkpoint `{path}`", entries)

    #: Arrays are restored in groups of about this many bytes: Orbax's
    #: transient buffers are then a group's, not the whole checkpoint's.
    GROUP_BYTES = 256 * 2**20

    def read(self, wanted):
        result: dict[str, Any] = {}
        group: dict[str, tuple] = {}
        size = 0
        for name, target in wanted.items():
            shape, dtype = self.entries[name]
            group[name] = target
            size += int(np.prod(shape)) * max(np.dtype(dtype).itemsize, np.dtype(target[0]).itemsize)
            if size >= self.GROUP_BYTES:
                result.update(self._restore(group))
                group, size = {}, 0
        if group:
            result.update(self._restore(group))
        return result

    def _restore(self, wanted: dict[str, tuple]) -> dict[str, Any]:
        ocp = self._ocp
        specs, args = {}, {}
        for name, (dtype, sharding) in wanted.items():
            shape = self.entries[name][0]
            path = self._paths[name]
            if sharding is None:
                specs[path] = jax.ShapeDtypeStruct(shape, dtype)
                args[path] = ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)
            else:
                specs[path] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
                args[path] = ocp.ArrayRestoreArgs(sharding=sharding, global_shape=shape, dtype=dtype)

        # The checkpoint's own structure, with a placeholder (not read) at
        # every leaf that is not asked for.
        def pick(chosen):
            return lambda path, _: chosen.get(tuple(path), ocp.PLACEHOLDER)

        target = jax.tree_util.tree_map_with_path(pick(specs), self._tree, is_leaf=_is_array_metadata)
        restore_args = jax.tree_util.tree_map_with_path(pick(args), self._tree, is_leaf=_is_array_metadata)
        restored = ocp.PyTreeCheckpointer().restore(
            self._path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args)
        )
        return {name: _at(restored, self._paths[name]) for name in wanted}


def _is_array_metadata(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (np.ndarray, jax.Array))


def plain_tree(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """Mappings as dicts and sequences as lists, keyed as their paths name them."""
    if is_leaf is not None and is_leaf(tree):
        return tree
    if isinstance(tree, Mapping):
        return {str(k): plain_tree(v, is_leaf) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)) and not _is_named_tuple(tree):
        return [plain_tree(v, is_leaf) for v in tree]
    if is_array_leaf(tree) or tree is None:
        return tree
    children = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)[0]
    if len(children) == 1 and children[0][1] is tree:
        return None  # an opaque leaf: not an array
    return {key_text(path[0]): plain_tree(child, is_leaf) for path, child in children}


def _at(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[_index(key)]
    return tree


def _index(key: Any) -> Any:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return getattr(key, attribute)
    return key


# ------------------------------------------------------------ single files


def _msgpack_source(path: str) -> Source:
    serialization = import_for_format("flax.serialization", "Reading a .msgpack checkpoint", "flax")
    with open(path, "rb") as file:
        tree = serialization.msgpack_restore(file.read())
    return TreeSource(_lists_from_index_dicts(tree), f"the msgpack file `{path}`")


def _lists_from_index_dicts(tree: Any) -> Any:
    """Flax writes a list or tuple as a dict keyed "0", "1", ...: the top one
    becomes a list again, so `(params, state)` is matched as a union."""
    if isinstance(tree, dict) and tree and set(tree) == {str(i) for i in range(len(tree))}:
        if all(isinstance(v, dict) for v in tree.values()):
            return [tree[str(i)] for i in range(len(tree))]
    return tree


def _safetensors_source(path: str) -> Source:
    import_for_format("safetensors", "Reading a .safetensors checkpoint")
    from safetensors.numpy import load_file

    return FlatSource(f"the safetensors file `{path}`", load_file(path))


def _npz_source(path: str) -> Source:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: _npz_dtype(data[key]) for key in data.files}
    return FlatSource(f"the npz file `{path}`", arrays)


def _npz_dtype(array: np.ndarray) -> np.ndarray:
    # NumPy writes bfloat16 (an ml_dtypes type) as raw 2-byte voids.
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:
        return array.view(jax.numpy.bfloat16)
    return array


def _eqx_tree(path: str, template: Any) -> Any:
    if template is None:
        raise ValueError(
            f"`load_checkpoint`: `{path}` is an Equinox file (`eqx.tree_serialise_leaves`), "
            f"which can only be read with the model as a template: load it into an "
            f"`EquinoxLayer`, or deserialise it with `eqx.tree_deserialise_leaves` and pass "
            f"the module."
        )
    eqx = import_for_format("equinox", "Reading a .eqx checkpoint", "equinox")
    # Every leaf Equinox writes (its `is_array_like`) goes into a slot, so the
    # file is read in the template's order without Equinox's shape checks:
    # a different shape is reported by name, like for the other formats.
    # Python scalars (`Dropout.p`, `inference` flags) are written too; they are
    # read to keep the order and then left as the template has them: they are
    # the model's settings, not weights.
    slots = jax.tree.map(lambda x: _Slot(x) if eqx.is_array_like(x) else x, template)

    def read_leaf(file, like):
        if isinstance(like, _Slot):
            like.read = np.load(file, allow_pickle=False)
        return like

    try:
        tree = eqx.tree_deserialise_leaves(path, slots, filter_spec=read_leaf)
    except Exception as error:
        raise ValueError(
            f"`load_checkpoint`: `{path}` could not be read with this layer's model as the "
            f"template ({error}). It was written for a model with another structure."
        ) from error
    return jax.tree.map(lambda x: x.result() if isinstance(x, _Slot) else x, tree)


class _Slot:
    """A leaf of a `.eqx` template and the array read for it."""

    def __init__(self, template: Any):
        self.template = template
        self.read: Any = None

    def result(self) -> Any:
        return self.read if _is_array(self.template) else self.template


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def open_source(source: Any, eqx_template: Any = None, convert: Callable[[Any], Any] = lambda t: t) -> Source:
    """A `Source` for a path (any format above) or a tree in memory.

    `convert` turns a framework object in memory (or deserialised from a
    `.eqx` file) into the tree whose paths are the layer's names.
    """
    if not isinstance(source, (str, os.PathLike)):
        return TreeSource(convert(source))
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`load_checkpoint`: no file or directory at `{path}`.")
    if os.path.isdir(path):
        return OrbaxSource(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".msgpack":
        return _msgpack_source(path)
    if suffix == ".safetensors":
        return _safetensors_source(path)
    if suffix == ".npz":
        return _npz_source(path)
    if suffix == ".eqx":
        return TreeSource(convert(_eqx_tree(path, eqx_template)), f"the Equinox file `{path}`")
    raise ValueError(
        f"`load_checkpoint` cannot tell the format of `{path}`: expected an Orbax checkpoint "
        f"directory or a file ending in .msgpack, .safetensors, .npz or .eqx. Rename the file "
        f"or pass the tree itself (e.g. what your framework's own loader returns)."
    )


# ------------------------------------------------------------------ writing


def format_for(path: str, format: str | None) -> str:
    """The format to write `path` in: `format`, or the one its suffix implies."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(
                f"`save_checkpoint` got an unknown format. Expected one of "
                f"{', '.join(FORMATS)} (or None: by the path's suffix). Received: format={format!r}"
            )
        return format
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if suffix:
        raise ValueError(
            f"`save_checkpoint` cannot tell the format from the suffix `{suffix}` of `{path}`. "
            f"Use no suffix (an Orbax directory), .msgpack, .safetensors, .npz or .eqx, or pass "
            f"`format=`."
        )
    return "orbax"


def flat_arrays(tree: Any) -> dict[str, np.ndarray]:
    """{key: array} for flat formats: each path's keys joined with `.`, as written."""
    parts = list(tree) if _is_union(tree) else [tree]
    flat: dict[str, np.ndarray] = {}
    for part in parts:
        for path, leaf in jax.tree_util.tree_flatten_with_path(part)[0]:
            if is_array_leaf(leaf):
                flat[".".join(key_text(k) for k in path)] = np.array(leaf, order="C")  # 0-d stays 0-d
    return flat


def write(path: str, format: str, tree: Any, eqx_tree: Any = None) -> None:
    """Writes `tree` (plain dicts/lists of arrays) at `path`; returns once it is complete."""
    if format == "orbax":
        ocp = import_for_format("orbax.checkpoint", "Writing an Orbax checkpoint")
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.abspath(path), tree)
        checkpointer.wait_until_finished()
        return
    if jax.process_count() > 1 and jax.process_index() != 0:
        return  # one file: process 0 writes it (every process called with the same values)
    if format == "msgpack":
        serialization = import_for_format("flax.serialization", "Writing a .msgpack checkpoint", "flax")
        data = serialization.to_bytes(jax.tree.map(np.asarray, tree))
        with open(path, "wb") as file:
            file.write(data)
    elif format == "safetensors":
        import_for_format("safetensors", "Writing a .safetensors checkpoint")
        from safetensors.numpy import save_file

        save_file(flat_arrays(tree), path)
    elif format == "npz":
        arrays = flat_arrays(tree)
        # NumPy cannot read bfloat16 back: it is written as float32 (exact).
        arrays = {k: a.astype(np.float32) if a.dtype == jax.numpy.bfloat16 else a for k, a in arrays.items()}
        with open(path, "wb") as file:
            np.savez(file, **cast(dict[str, Any], arrays))
    elif format == "eqx":
        if eqx_tree is None:
            raise ValueError(
                "`save_checkpoint(format=\"eqx\")` writes an Equinox module: only an "
                "`EquinoxLayer` has one. Use an Orbax directory, .msgpack, .safetensors or .npz."
            )
        eqx = import_for_format("equinox", "Writing a .eqx checkpoint", "equinox")
        eqx.tree_serialise_leaves(path, eqx_tree)
