"""The Keras saving hooks of a JaxLayer: by reference to registered code, or portably.

`LayerSaving` is mixed into `JaxLayer` and holds the Keras saving hooks
(`get_config`, `from_config`, `save_assets`, `load_assets`, the build
config). A layer is saved in one of two forms, chosen by `save_as`:

- "source": the config names the registered functions (or framework model
  class) and the layout of params/state; loading runs the user's code.
- "portable": the config describes the model, and the `.keras` archive's
  assets hold it as `jax.export` programs (see `_export`); loading needs only
  keras and jax, and gives a `PortableLayer`.

"auto" (the default) saves the source form when the code is registered, the
portable form otherwise; `_save_form` is the one place that decides.
`_config_codec` encodes the trees and functions; `_portable_programs` holds
the exported programs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import keras

from ._config_codec import (
    NotRegisteredError,
    UnencodableTree,
    decode_tree,
    deserialize_function,
    encode_tree,
    serialize_function,
)
from ._portable_programs import ExportedModel, asset_files, export_program

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

        def _forms_config(self) -> dict: ...

        def _plain_param_dtypes(self) -> list: ...

        def _plain_param_avals(self) -> list: ...

    # ----------------------------------------------------------------- config

    def get_config(self) -> dict:
        config = keras.layers.Layer.get_config(self)
        config["seed"] = self._seed
        form, source = self._save_form()
        if source is not None:
            config.update(source)
            if self.save_as != "auto":
                config["save_as"] = self.save_as
        else:
            config.update(self._portable_config())
        config.update(self._forms_config())  # type: ignore[attr-defined]
        return config

    def _save_form(self) -> tuple[str, dict | None]:
        """`("source", source_config)` or `("portable", None)`, as `save_as` says.

        "auto" takes the source form when `_source_config` can describe the
        layer (its code is registered), the portable form otherwise.
        """
        if self.save_as == "portable":
            return "portable", None
        try:
            return "source", self._source_config()
        except NotRegisteredError:
            if self.save_as == "source":
                raise
            return "portable", None

    def _source_config(self) -> dict:
        """What the source form stores besides the base config; raises
        NotRegisteredError when the code is not registered."""
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
                "params_spec": encode_tree(self._params_tree, self._plain_param_dtypes()),
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
        model = self._exported_model()
        return {
            "portable": model.metadata,
            "params_spec": encode_tree(
                self._params_tree, self._plain_param_dtypes(), custom_nodes=True
            ),
            "state_spec": encode_tree(
                self._state_tree, [v.dtype for v in self._state_variables], custom_nodes=True
            ),
        }

    def _exported_model(self) -> ExportedModel:
        """The layer's model as `jax.export` programs.

        Exported once per program and input signature, and reused by every
        later save.
        """
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
            self._program.plain(),  # LoRA merges and int8 dequantizes around it
            self._plain_param_avals(),
            [self._call_aval(v) for v in self._state_variables],
            {training: self._abstract_call_rng(training) if self.seed_generator is not None else None
             for training in (False, True)},
            self._input_record,
            self.native_serialization_platforms,
            self._signature.names,
            self.name,
        )
        # The class a portable load stands in for (`portable_class`).
        model.metadata["class_name"] = type(self).__name__
        self._set_untracked("_export_cache", (key, model))
        return model

    @classmethod
    def from_config(cls, config: dict) -> Any:
        if "portable" in config:
            # Registered by `_portable_layer`, which `import jaxlayer` imports.
            portable = keras.saving.get_registered_object("jaxlayer>PortableLayer")
            if portable is None:  # pragma: no cover - `import jaxlayer` registers it
                raise ValueError("`jaxlayer.PortableLayer` is not registered: `import jaxlayer` first.")
            return portable.from_config(config)
        config = dict(config)
        params_spec, state_spec = config.pop("params_spec", None), config.pop("state_spec", None)
        if params_spec is not None or state_spec is not None:
            config = cls._with_saved_variables(config, decode_tree(params_spec), decode_tree(state_spec))
        return cls._from_source_config(config)

    @classmethod
    def _with_saved_variables(cls, config: dict, params: Any, state: Any) -> dict:
        """The constructor arguments that create the variables of the saved layout
        (zeros: Keras loads the saved values into them)."""
        return dict(config, params=params, state=state)

    @classmethod
    def _from_source_config(cls, config: dict) -> Any:
        config["call_fn"] = deserialize_function(config["call_fn"])
        config["init_fn"] = deserialize_function(config.get("init_fn"))
        return cls(**config)

    # ----------------------------------------------------------------- assets

    def save_assets(self, dir_path: str) -> None:
        """Writes the exported programs of a portable save (Keras calls this)."""
        if self._save_form()[0] != "portable":
            return
        for name, blob in asset_files(self._exported_model()).items():
            with open(os.path.join(dir_path, name), "wb") as file:
                file.write(blob)

    def load_assets(self, dir_path: str) -> None:
        """Nothing to read for the source form (`PortableLayer` reads its programs)."""

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
