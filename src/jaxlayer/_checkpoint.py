"""Pretrained weights in and out by name: `load_checkpoint`, `save_checkpoint`
and the `LoadReport`.

A layer's variables are matched to a checkpoint's leaves by name: the
variable's `name` (`params.Dense_0.kernel`) against the leaf's path written
the same way. `.`, `/` and Haiku's `~` separators compare alike. Everything is
checked on names, shapes and dtypes before any array is read, and every
array is read before any variable is assigned, so a failed load changes
nothing. File formats are in `_checkpoint_formats`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import keras
import numpy as np

from . import _checkpoint_formats as formats
from ._dtypes import canonical_dtype
from ._host import to_host

if TYPE_CHECKING:
    _MixinBase = keras.layers.Layer
else:
    _MixinBase = object

Rename = Mapping[str, str] | Callable[[str], "str | None"] | None


@dataclasses.dataclass
class LoadReport:
    """What `load_checkpoint` did, by variable name.

    Attributes:
        loaded: the layer's variables that were assigned from the source.
        missing: the layer's variables the source has no leaf for (they keep
            their values; only possible with `strict=False`).
        unexpected: the source's leaves that match no variable (after
            `rename`; only possible with `strict=False`).
        skipped: names matched by `skip` (the layer's variables keep their
            values) or dropped by a `rename` callable.
        cast: the loaded variables whose source dtype differed (cast to the
            variable's dtype).
        mismatched: `(name, (source shape, source dtype), (layer shape, layer
            dtype))` for leaves whose shapes differ. Always empty in what
            `load_checkpoint` returns (a mismatch that `skip` does not cover
            raises); `jaxlayer inspect CHECKPOINT --against m.keras` lists them.
        source: what was read (`the Orbax checkpoint `path``, ...).

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from jaxlayer import JaxLayer
        >>> layer = JaxLayer(lambda params, inputs: inputs @ params["w"] + params["b"],
        ...                  params={"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)})
        >>> report = layer.load_checkpoint({"w": np.ones((2, 3), np.float64)}, strict=False)
        >>> report.loaded, report.missing, report.cast
        (['w'], ['b'], ['w'])
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    cast: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    source: str = ""
    _details: dict[str, str] = dataclasses.field(default_factory=dict, repr=False, init=False, compare=False)

    def __str__(self) -> str:
        counts = ", ".join(
            f"{len(getattr(self, field))} {field}"
            for field in ("loaded", "missing", "unexpected", "skipped", "cast", "mismatched")
        )
        lines = [f"LoadReport ({self.source}): {counts}" if self.source else f"LoadReport: {counts}"]
        for field in ("missing", "unexpected", "skipped", "cast"):
            names = getattr(self, field)
            if names:
                lines.append(f"  {field}:")
                lines.extend(f"    {name}{self._details.get(field + name, '')}" for name in names)
        for name, source, layer in self.mismatched:
            lines.append(f"  mismatched: {name}: source {_spec(*source)}, layer {_spec(*layer)}")
        return "\n".join(lines)


def _spec(shape: tuple, dtype: Any) -> str:
    return f"{np.dtype(dtype).name}[{', '.join(str(d) for d in shape)}]"


def comparable(name: str) -> str:
    """A name with `.`, `/` and `~` separators made alike (`a/~/b.c` -> `a.b.c`)."""
    return ".".join(part for part in re.split(r"[./]", name) if part not in ("", "~"))


def nnx_state_name(name: str) -> str:
    """A name Orbax wrote for an `nnx.State` leaf (`lin.kernel.value`) as the
    layer's (`lin.kernel`)."""
    return name[: -len(".value")] if name.endswith(".value") else name


def _renamed(names: Iterable[str], rename: Rename, own: Callable[[str], str]) -> dict[str, str | None]:
    """Source name -> name after the layer's `own` convention, then `rename` (None: dropped)."""
    owned = {name: own(name) for name in names}
    if rename is None:
        return dict(owned)
    apply = _rename_function(rename)
    return {name: apply(new) for name, new in owned.items()}


def _rename_function(rename: Any) -> Callable[[str], str | None]:
    if isinstance(rename, Mapping):
        try:
            patterns = [(re.compile(pattern), replacement) for pattern, replacement in rename.items()]
        except (TypeError, re.error) as error:
            raise ValueError(
                f"`load_checkpoint`: a key of `rename` is not a regex ({error}). Received: "
                f"rename={rename!r}"
            ) from None

        def substitute(name: str) -> str:
            for pattern, replacement in patterns:
                name = pattern.sub(replacement, name)
            return name

        return substitute
    if callable(rename):

        def call(name: str) -> str | None:
            new = rename(name)
            if new is not None and not isinstance(new, str):
                raise TypeError(
                    f"`load_checkpoint`: the `rename` callable must return a str or None; it "
                    f"returned {type(new).__name__} for `{name}`."
                )
            return new

        return call
    raise TypeError(
        f"`load_checkpoint` expects `rename` to be a dict {{regex: replacement}}, a callable "
        f"from name to name (or None to drop), or None. Received: rename={rename!r}"
    )


def _patterns(skip: Any) -> list[re.Pattern]:
    if isinstance(skip, str):
        skip = (skip,)
    try:
        return [re.compile(pattern) for pattern in skip]
    except (TypeError, re.error) as error:
        raise ValueError(
            f"`load_checkpoint` expects `skip` to be a regex or a sequence of regexes "
            f"({error}). Received: skip={skip!r}"
        ) from None


class LoadPlan:
    """Which source leaf each variable takes, checked; the report without arrays."""

    def __init__(
        self,
        variables: list,
        source: formats.Source,
        skip: Any,
        rename: Rename,
        own: Callable[[str], str] = lambda name: name,
    ):
        skips = _patterns(skip)
        report = LoadReport(source=source.description)
        renamed = _renamed(source.entries, rename, own)
        by_name: dict[str, str] = {}  # comparable target name -> source name
        for original, new in renamed.items():
            if new is None:
                report.skipped.append(original)
                continue
            key = comparable(new)
            if key in by_name:
                raise ValueError(
                    f"`load_checkpoint`: the source leaves `{by_name[key]}` and `{original}` both "
                    f"become `{new}` after `rename`. Make `rename` map them apart, or drop one."
                )
            by_name[key] = original
        self.pairs: list[tuple[Any, str]] = []
        used: set[str] = set()
        for variable in variables:
            key = comparable(variable.name)
            source_name = by_name.get(key)
            if source_name is not None:
                used.add(key)
            if any(p.search(variable.name) for p in skips):
                report.skipped.append(variable.name)
                continue
            if source_name is None:
                report.missing.append(variable.name)
                continue
            shape, dtype = source.entries[source_name]
            layer_dtype = canonical_dtype(variable.dtype)
            if tuple(shape) != tuple(variable.shape):
                report.mismatched.append(
                    (variable.name, (tuple(shape), dtype), (tuple(variable.shape), layer_dtype))
                )
                continue
            if np.dtype(dtype) != layer_dtype:
                report.cast.append(variable.name)
                report._details["cast" + variable.name] = f" ({np.dtype(dtype).name} -> {layer_dtype.name})"
            self.pairs.append((variable, source_name))
        for key, source_name in by_name.items():
            new = renamed[source_name] or source_name
            if key in used or any(p.search(new) for p in skips):
                if key not in used:
                    report.skipped.append(new)
                continue
            report.unexpected.append(new)
        for field in ("missing", "unexpected"):
            for name in getattr(report, field):
                report._details[field + name] = self._shape_detail(name, field, variables, source, by_name)
        report.loaded = [variable.name for variable, _ in self.pairs]
        self.report = report

    @staticmethod
    def _shape_detail(name, field, variables, source, by_name) -> str:
        if field == "missing":
            variable = next(v for v in variables if v.name == name)
            return f" {_spec(tuple(variable.shape), canonical_dtype(variable.dtype))}"
        shape, dtype = source.entries[by_name[comparable(name)]]
        return f" {_spec(shape, dtype)}"

    def check(self, strict: bool) -> None:
        """Raises the ValueError for shape mismatches, and with `strict` for names."""
        report = self.report
        if report.mismatched:
            rows = "\n".join(
                f"  {name}: source {_spec(*src)}, layer {_spec(*dst)}" for name, src, dst in report.mismatched
            )
            raise ValueError(
                f"`load_checkpoint`: {len(report.mismatched)} leaves of {report.source} have "
                f"another shape than the layer's variables (nothing was loaded; shapes are never "
                f"padded or cut):\n{rows}\nPass `skip=` with a regex for them to keep the layer's "
                f"own values (e.g. a new head), or build the layer for the checkpoint's shapes."
            )
        if strict and (report.missing or report.unexpected):
            parts = []
            for field, what in (("missing", "layer variables not in the source"),
                                ("unexpected", "source leaves matching no variable")):
                names = getattr(report, field)
                if names:
                    shown = "\n".join(f"    {n}{report._details[field + n]}" for n in names[:40])
                    more = f"\n    ... and {len(names) - 40} more" if len(names) > 40 else ""
                    parts.append(f"  {len(names)} {what}:\n{shown}{more}")
            raise ValueError(
                f"`load_checkpoint(strict=True)`: the names of {report.source} do not match the "
                f"layer's (nothing was loaded).\n" + "\n".join(parts) + "\nPass `rename=` to map "
                "the source's names to the layer's (see `[v.name for v in layer.weights]`), "
                "`skip=` for leaves to leave alone, or `strict=False` to load what matches."
            )


def _sharding(variable: Any) -> Any:
    """The sharding to restore into: a layout over several devices, else None
    (read to host memory, then assigned: faster than Orbax's array path)."""
    value = variable.value
    if isinstance(value, jax.Array) and len(value.sharding.device_set) > 1:
        return value.sharding
    return None


class CheckpointHooks(_MixinBase):
    """`load_checkpoint` / `save_checkpoint` of `JaxLayer` (a mixin)."""

    _param_variables: list
    _state_variables: list

    def load_checkpoint(
        self,
        source: Any,
        *,
        strict: bool = True,
        skip: str | Iterable[str] = (),
        rename: Rename = None,
    ) -> LoadReport:
        """Loads params and state by name from a checkpoint file or a tree.

        Each layer variable takes the source leaf with its name: the
        variable's `name` (`params.Dense_0.kernel`, `linear.w`, `bn.mean`,
        `layers.0.weight`) against the leaf's path, with `.`, `/` and `~`
        separators alike. Everything is checked before anything is assigned:
        a failed load changes nothing.

        Args:
            source: a path (an Orbax checkpoint directory or one
                `CheckpointManager` step, a `.msgpack`, `.safetensors` or
                `.npz` file, or for `EquinoxLayer` a `.eqx` file), or a tree
                in memory (dicts, lists, NamedTuples, `FrozenDict`,
                `nnx.State`, Equinox modules). A tuple or list of trees
                (Haiku's `(params, state)`) is matched as their union. Its
                arrays are copied; the source stays valid.
            strict: raise a `ValueError` listing the layer variables missing
                from the source and the source leaves matching no variable
                (those not covered by `skip`). With `strict=False` they are
                reported and left alone.
            skip: regexes (`re.search`) over the names: matching variables
                keep their own values (a new head), matching source leaves
                are ignored.
            rename: applied to the source's names before matching: a dict
                `{regex: replacement}` (each `re.sub` in turn, e.g.
                `{"^model\\\\.": ""}`), or a callable from name to name (None
                drops the leaf).

        Returns:
            A `LoadReport` (`print` it for a summary).

        Raises:
            ValueError: the layer is not built, a shape differs (never padded
                or cut, even with `strict=False`; `skip` it), names do not
                match with `strict=True`, or the format is not recognised.
            FileNotFoundError: the path does not exist.
            ImportError: the format needs a package that is not installed
                (the message names the pip extra).

        Examples:
            >>> import jax.numpy as jnp, numpy as np
            >>> from jaxlayer import JaxLayer
            >>> layer = JaxLayer(lambda params, inputs: inputs @ params["body"]["w"] @ params["head"]["w"],
            ...                  params={"body": {"w": jnp.zeros((4, 4))}, "head": {"w": jnp.zeros((4, 2))}})
            >>> pretrained = {"model": {"body": {"w": np.eye(4)}, "head": {"w": np.ones((4, 10))}}}
            >>> report = layer.load_checkpoint(pretrained, skip=["^head"], rename={"^model\\\\.": ""})
            >>> report.loaded, report.skipped
            (['body.w'], ['head.w'])
        """
        if not self.built:
            raise ValueError(
                f"`load_checkpoint` was called on the layer `{self.name}` before it was built: "
                f"call it once on a batch (or `layer.build(input_shape)`, or put it in a model "
                f"with `keras.Input`) first, so that its variables exist."
            )
        self._check_plain_params("load_checkpoint")  # type: ignore[attr-defined]
        source = formats.open_source(source, self._checkpoint_template(), self._checkpoint_source)
        variables = list(self._param_variables) + list(self._state_variables)
        plan = LoadPlan(variables, source, skip, rename, self._checkpoint_name)
        plan.check(strict)
        wanted = {
            name: (canonical_dtype(variable.dtype), _sharding(variable)) for variable, name in plan.pairs
        }
        arrays = source.read(wanted)  # all read (and cast) before any is assigned
        for variable, name in plan.pairs:
            variable.assign(arrays.pop(name))
        return plan.report

    def save_checkpoint(self, path: str | os.PathLike, *, format: str | None = None) -> None:
        """Writes params and state in the framework's own layout, for its own tools.

        The format follows the suffix: none for an Orbax directory (written
        with `ocp.StandardCheckpointer`, waited for), `.msgpack`
        (`flax.serialization`), `.safetensors` (flat keys joined with `.`),
        `.npz` (the same keys; bfloat16 is written as float32, which NumPy
        reads), `.eqx` (`eqx.tree_serialise_leaves`, `EquinoxLayer` only).
        The tree is what the framework uses: `{"params": ..., "batch_stats":
        ...}` for `FlaxLayer`, the pure dict of the module's state for
        `NnxLayer`, `params` or `(params, state)` for `HaikuLayer` and a
        plain `JaxLayer`. Under several processes every process must call
        it; Orbax writes the shards together, process 0 writes other formats.

        Args:
            path: the directory or file to write.
            format: `"orbax"`, `"msgpack"`, `"safetensors"`, `"npz"` or
                `"eqx"`; by default, from the suffix.

        Examples:
            >>> import os, tempfile, jax.numpy as jnp, numpy as np
            >>> from jaxlayer import JaxLayer
            >>> layer = JaxLayer(lambda params, inputs: inputs @ params["w"], params={"w": jnp.eye(2)})
            >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
            >>> layer.save_checkpoint(path)
            >>> np.load(path)["w"].tolist()
            [[1.0, 0.0], [0.0, 1.0]]
        """
        path = os.fspath(path)
        chosen = formats.format_for(path, format)
        if not self.built:
            raise ValueError(
                f"`save_checkpoint` was called on the layer `{self.name}` before it was built: "
                f"call it once on a batch first."
            )
        if chosen == "eqx":
            formats.write(path, chosen, None, eqx_tree=self._checkpoint_template())
            return
        tree = self._checkpoint_tree(chosen == "orbax")
        formats.write(path, chosen, tree)

    # ------------------------------------------------------------ hooks

    def _checkpoint_tree(self, keep_global: bool) -> Any:
        """The tree `save_checkpoint` writes: `params`, or `(params, state)`.

        `keep_global`: Orbax writes arrays spread over processes itself;
        other writers get host copies.
        """
        params, state = self._checkpoint_parts(keep_global)
        return params if not self._state_variables else [params, state]

    def _checkpoint_parts(self, keep_global: bool) -> tuple[Any, Any]:
        params, state = self.get_params(), self.get_state()  # type: ignore[attr-defined]
        if not keep_global:
            params, state = to_host(params), to_host(state)
        return formats.plain_tree(params), formats.plain_tree(state)

    def _checkpoint_source(self, source: Any) -> Any:
        """A source as the layer's names read it (adapters convert framework objects)."""
        return source

    def _checkpoint_template(self) -> Any:
        """The framework object a `.eqx` file is read and written with (None: none)."""
        return None

    def _checkpoint_name(self, name: str) -> str:
        """A source name as the framework's own tools write it -> the layer's name."""
        return name


def deep_merge(a: Any, b: Any) -> Any:
    """Two nested dicts as one (NNX params and state share module keys)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return b
    merged = dict(a)
    for key, value in b.items():
        merged[key] = deep_merge(merged[key], value) if key in merged else value
    return merged
