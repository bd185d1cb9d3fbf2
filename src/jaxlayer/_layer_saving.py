"""How a JaxLayer saves itself: by reference to registered code, or portably.

`LayerSaving` is mixed into `JaxLayer` and holds the Keras saving hooks
(`get_config`, `from_config`, `save_assets`, `load_assets`, the build
config). A layer is saved in one of two forms, chosen by `save_as`:

- "source": the config names the registered functions (or framework model
  class) and the layout of params/state; loading runs the user's code.
- "portable": the config describes the model, and the `.keras` archive's
  assets hold it as `jax.export` programs (see `_export`); loading needs only
  keras and jax, and gives a `PortableLayer`.

"auto" (the default) saves the source form when the code is registered, the
portable form otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import keras
import numpy as np

from ._saving import NotRegisteredError, UnencodableTree, encode_tree

if TYPE_CHECKING:
    from ._program import Program
    from ._signature import FunctionSignature

    # For the type checker only: the mixin is always combined with a Layer.
    _MixinBase = keras.layers.Layer
else:
    _MixinBase = object

SAVE_AS = ("auto", "portable", "source")


def check_save_as(save_as: Any) -> str:
    if save_as not in SAVE_AS:
        raise ValueError(
            f"`save_as` must be one of {', '.join(repr(s) for s in SAVE_AS)}: "
            f'"source" stores references to your registered code, "portable" '
            f'stores the model as `jax.export` programs that load without it, "auto" '
            f"picks source when the code is registered. Received: save_as={save_as!r}"
        )
    return save_as


class LayerSaving(_MixinBase):
    """The Keras saving hooks of `JaxLayer` (a mixin; see the module docstring)."""

    # Set by `JaxLayer.__init__` / `build`; declared for the type checker.
    call_fn: Callable[..., Any]
    init_fn: Callable[..., Any] | None
    save_as: str
    native_serialization_platforms: Any
    seed_generator: Any
    _seed: int | None
    _signature: FunctionSignature
    _program: Program
    _param_variables: list
    _state_variables: list
    _params_tree: Any
    _state_tree: Any
    _input_record: Any
    _input_dtypes: Any
    _export_cache: Any

    if TYPE_CHECKING:

        def _set_untracked(self, name: str, value: Any) -> None: ...

        def _call_aval(self, variable: Any) -> jax.ShapeDtypeStruct: ...

        def _abstract_call_rng(self, training: bool) -> Any: ...

    # ----------------------------------------------------------------- config

    def get_config(self) -> dict:
        config = keras.layers.Layer.get_config(self)
        config["seed"] = self._seed
        if self.save_as != "portable":
            try:
                source = self._source_config()
            except NotRegisteredError:
                if self.save_as == "source":
                    raise
            else:
                config.update(source)
                if self.save_as != "auto":
                    config["save_as"] = self.save_as
                return config
        config.update(self._portable_config())
        return config

    def _source_config(self) -> dict:
        """What the source form stores besides the base config; raises
        NotRegisteredError when the code is not registered."""
        from ._saving import serialize_function

        config = {
            "call_fn": serialize_function(self.call_fn, "call_fn", self.name),
            "init_fn": serialize_function(self.init_fn, "init_fn", self.name),
            "native_serialization_platforms": self.native_serialization_platforms,
        }
        config.update(self._variables_spec())
        return config

    def _variables_spec(self) -> dict:
        """The layout of params/state, so loading needs no `init_fn` call."""
        if not (self._param_variables or self._state_variables):
            return {}
        try:
            return {
                "params_spec": encode_tree(self._params_tree, [v.dtype for v in self._param_variables]),
                "state_spec": encode_tree(self._state_tree, [v.dtype for v in self._state_variables]),
            }
        except UnencodableTree as error:
            if self.init_fn is None:
                raise NotRegisteredError(
                    f"Cannot save JaxLayer `{self.name}` by reference: its params/state "
                    f"hold {error}, which the config cannot describe, and there is no "
                    f"`init_fn` to rebuild them at load time. Use dicts, lists and "
                    f"tuples, pass a registered `init_fn`, or save it portably "
                    f"(`save_as=\"portable\"`)."
                ) from None
            return {}

    def _portable_config(self) -> dict:
        model = self.exported_model()
        return {
            "portable": model.metadata,
            "params_spec": encode_tree(
                self._params_tree, [v.dtype for v in self._param_variables], custom_nodes=True
            ),
            "state_spec": encode_tree(
                self._state_tree, [v.dtype for v in self._state_variables], custom_nodes=True
            ),
        }

    def exported_model(self) -> Any:
        """The layer's model as `jax.export` programs (an `ExportedModel`).

        Exported once per program and input signature, and reused by every
        later save.
        """
        from ._export import export_program

        if not self.built or self._input_record is None:
            raise ValueError(
                f"Cannot save JaxLayer `{self.name}` portably before it has been "
                f"called: the exported program needs the inputs' structure, shapes "
                f"and dtypes. Call the layer (or its model) once, or create the "
                f"model with `keras.Input`, before saving."
            )
        key = (id(self._program), repr(self._input_record), self.compute_dtype)
        cached = self._export_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        model = export_program(
            self._program,
            [self._call_aval(v) for v in self._param_variables],
            [self._call_aval(v) for v in self._state_variables],
            {training: self._abstract_call_rng(training) if self.seed_generator is not None else None
             for training in (False, True)},
            self._input_record,
            self.native_serialization_platforms,
            self._signature.names,
            self.name,
        )
        model.metadata["class_name"] = _original_class_name(self)
        self._set_untracked("_export_cache", (key, model))
        return model

    @classmethod
    def from_config(cls, config: dict) -> Any:
        if "portable" in config:
            from ._portable import PortableLayer

            return PortableLayer.from_config(config)
        return cls._from_source_config(dict(config))

    @classmethod
    def _from_source_config(cls, config: dict) -> Any:
        from ._saving import deserialize_function

        config["call_fn"] = deserialize_function(config["call_fn"])
        config["init_fn"] = deserialize_function(config.get("init_fn"))
        return cls(**config)

    # ----------------------------------------------------------------- assets

    def save_assets(self, dir_path: str) -> None:
        """Writes the exported programs of a portable save (Keras calls this)."""
        if not self._saves_portable():
            return
        from ._export import asset_files

        for name, blob in asset_files(self.exported_model()).items():
            with open(os.path.join(dir_path, name), "wb") as file:
                file.write(blob)

    def load_assets(self, dir_path: str) -> None:
        """Nothing to read for the source form (`PortableLayer` reads its programs)."""

    def _saves_portable(self) -> bool:
        if self.save_as != "auto":
            return self.save_as == "portable"
        try:
            self._source_config()
        except NotRegisteredError:
            return True
        return False

    # ----------------------------------------------------------- build config

    def get_build_config(self) -> dict | None:
        build_config = keras.layers.Layer.get_build_config(self)
        if build_config is not None and self._input_dtypes is not None:
            build_config = dict(build_config, input_dtype=self._input_dtypes)
        return build_config

    def build_from_config(self, config: dict) -> None:
        if self.built or not config:
            return
        self._set_untracked("_pending_input_dtypes", config.get("input_dtype"))
        try:
            keras.layers.Layer.build_from_config(self, config)
        finally:
            self._set_untracked("_pending_input_dtypes", None)

    # ------------------------------------------------------------ input record

    def _record_inputs(self, inputs: Any, dtype_of: Any = None) -> None:
        """Remembers the inputs' structure, dtypes and shapes for export.

        Dimensions that differ between recorded calls become unknown (None).
        """
        from ._program import AbstractInput

        def record(x):
            shape = tuple(None if d is None else int(d) for d in x.shape)
            dtype = dtype_of(x) if dtype_of else keras.backend.standardize_dtype(x.dtype)
            return AbstractInput(shape, jax.numpy.dtype(dtype))

        try:
            new = jax.tree.map(record, inputs)
        except Exception:  # noqa: BLE001 - not array-like: nothing to export from
            return
        old = self._input_record
        if old is not None:
            try:
                new = jax.tree.map(_merge_records, old, new, is_leaf=_is_record)
            except ValueError:  # a different structure: the latest wins
                pass
        self._set_untracked("_input_record", new)


def _original_class_name(layer: Any) -> str:
    from ._portable import PortableLayer

    for cls in type(layer).__mro__:
        if cls is not PortableLayer and issubclass(cls, PortableLayer):
            continue
        return cls.__name__
    return type(layer).__name__


def _is_record(x: Any) -> bool:
    from ._program import AbstractInput

    return isinstance(x, AbstractInput)


def _merge_records(a: Any, b: Any) -> Any:
    from ._program import AbstractInput

    if len(a.shape) != len(b.shape) or a.dtype != b.dtype:
        return b
    shape = tuple(x if x == y else None for x, y in zip(a.shape, b.shape))
    return AbstractInput(shape, np.dtype(a.dtype))
