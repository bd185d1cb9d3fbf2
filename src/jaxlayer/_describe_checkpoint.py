"""`jaxlayer inspect CHECKPOINT [--against m.keras]`: a checkpoint's leaves, and
the `load_checkpoint` report it would give, without loading anything.

An Orbax checkpoint is described from its metadata (no array is read); the
single-file formats are read by their own loaders. `--against` takes the
layers' names, shapes and dtypes from the `.keras` file's config, so no
model is built and no user code is imported.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ._checkpoint import LoadPlan, nnx_state_name
from ._checkpoint_formats import SUFFIXES, open_source
from ._describe_file import describe_file


def is_checkpoint_path(path: str) -> bool:
    """Whether `jaxlayer inspect` should read `path` as a checkpoint (not a .keras file)."""
    return os.path.isdir(path) or os.path.splitext(path)[1].lower() in SUFFIXES


def describe_checkpoint(path: str) -> str:
    """The checkpoint's leaves (names, dtypes, shapes) and counts, as text."""
    source = open_source(path)
    values = sum(int(np.prod(shape)) for shape, _ in source.entries.values())
    size = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in source.entries.values())
    lines = [f"{source.description}: {len(source.entries)} arrays, {values:,} values, {size:,} bytes"]
    width = max((len(name) for name in source.entries), default=0)
    for name, (shape, dtype) in sorted(source.entries.items()):
        dims = ", ".join(str(d) for d in shape)
        lines.append(f"  {name:<{width}}  {np.dtype(dtype).name}[{dims}]")
    return "\n".join(lines)


class _SavedVariable(NamedTuple):
    name: str
    shape: tuple
    dtype: np.dtype


def compare_checkpoint(path: str, keras_path: str) -> str:
    """The report `load_checkpoint(path, strict=False)` would give for each
    JaxLayer of the `.keras` file (mismatched shapes listed, not raised)."""
    source = open_source(path)
    description = describe_file(keras_path)
    if not description["layers"]:
        return f"{keras_path} holds no JaxLayer to compare {source.description} with."
    blocks = []
    for layer in description["layers"]:
        rows = (layer["params"] or []) + (layer["state"] or [])
        variables = [_SavedVariable(r["path"], tuple(r["shape"]), np.dtype(r["dtype"])) for r in rows]
        own = nnx_state_name if layer["class"] == "NnxLayer" else (lambda name: name)
        report = LoadPlan(variables, source, (), None, own).report
        blocks.append(f"layer `{layer['name']}` ({layer['class']}):\n{_indent(str(report))}")
    return "\n\n".join(blocks)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
