"""`PortableLayer`: a JaxLayer whose model is stored `jax.export` programs.

`keras.models.load_model` returns one wherever a layer was saved portably
(whatever its class was: `JaxLayer`, `HaikuLayer`, `FlaxLayer`, ...), so the
file loads with only keras and jax installed. It predicts, trains through the
stored backward program, draws fresh rng keys, saves again and exports like
the layer it came from; `get_params` / `set_params` use the saved tree layout
(framework nodes such as Equinox modules come back as `SavedNode`s).
"""

from __future__ import annotations

import os
from typing import Any, cast

import jax
import keras

from ._config_codec import decode_tree
from ._layer import JaxLayer
from ._portable_programs import ExportedModel, blobs_from_files
from ._program import is_abstract


@keras.saving.register_keras_serializable(package="jaxlayer")
class PortableLayer(JaxLayer):
    """A JaxLayer loaded from a portable save; needs no model code to run.

    You get one from `keras.models.load_model`; to save a layer in this form,
    create it with `save_as="portable"` (or leave `save_as="auto"` and do not
    register its functions).

    Args:
        portable: the saved description of the programs (from the config).
        params: the params tree in the saved layout (`from_config` decodes it
            from the config's `params_spec`, with zeros that Keras then
            overwrites with the saved weights).
        state: the state tree in the saved layout (from `state_spec`).
        seed: the seed of the layer's rng generator.
        **kwargs: the usual Keras layer arguments.

    Examples:
        >>> import jax.numpy as jnp, keras, numpy as np, tempfile, os
        >>> from jaxlayer import JaxLayer, PortableLayer
        >>> layer = JaxLayer(lambda params, inputs: inputs @ params["w"],
        ...                  params={"w": jnp.ones((4, 2))})
        >>> model = keras.Sequential([keras.Input((4,)), layer])
        >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
        >>> model.save(path)  # a lambda: saved as the program itself
        >>> loaded = keras.models.load_model(path)
        >>> isinstance(loaded.layers[0], PortableLayer)
        True
        >>> np.asarray(loaded(np.ones((3, 4), "float32"))).tolist()
        [[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]]
    """

    def __init__(
        self,
        portable: dict,
        params: Any = None,
        state: Any = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("save_as", None)
        model = ExportedModel.from_metadata(portable)
        super().__init__(
            model,
            params=params,
            state=state,
            seed=seed,
            save_as="portable",
            **kwargs,
        )
        self._set_untracked("_input_record", model.input_structure())

    @property
    def _exported(self) -> ExportedModel:
        """The stored programs and their description."""
        return cast(ExportedModel, self.call_fn)

    @classmethod
    def from_config(cls, config: dict) -> PortableLayer:
        if cls is PortableLayer:
            cls = portable_class(config["portable"].get("class_name", "JaxLayer"))
        config = dict(config)
        # Zeros of the saved layout: Keras loads the saved values into them.
        for spec, argument in (("params_spec", "params"), ("state_spec", "state")):
            encoded = config.pop(spec, None)
            config[argument] = None if encoded is None else decode_tree(encoded)
        return cls(**config)

    def _exported_model(self) -> ExportedModel:
        return self._exported

    def load_assets(self, dir_path: str) -> None:
        files = {}
        for name in os.listdir(dir_path):
            with open(os.path.join(dir_path, name), "rb") as file:
                files[name] = file.read()
        self._exported.set_blobs(blobs_from_files(files))

    def _get_call_rng(self, training: bool) -> Any:
        structure = self._exported.rng_structure(training)
        return jax.tree.map(
            lambda _: self._get_call_seed(),
            structure,
            is_leaf=is_abstract,
        )

    def compute_output_spec(self, inputs: Any, training: bool = False) -> Any:
        if self._exported.loaded:
            return super().compute_output_spec(inputs, training)
        # Keras rebuilds the model graph before it reads the programs from
        # the archive: use the output shapes saved with them.
        return jax.tree.map(
            lambda a: keras.KerasTensor(a.shape, dtype=a.dtype.name),
            self._exported.output_structure(bool(training)),
            is_leaf=is_abstract,
        )


_CLASSES: dict[str, type] = {}


def portable_class(original: str) -> type:
    """The PortableLayer class standing in for a layer class named `original`.

    Keras addresses a layer's weights and assets in the archive by its class
    name (`layers/haiku_layer/...`), so a layer saved from a `HaikuLayer`
    loads as a PortableLayer subclass named `HaikuLayer`. These subclasses are
    registered as `jaxlayer>Portable<original>`, so a loaded model saves and
    loads again.
    """
    if original == PortableLayer.__name__:
        return PortableLayer
    cls = _CLASSES.get(original)
    if cls is None:
        cls = type(
            original,
            (PortableLayer,),
            {
                "__module__": __name__,
                "__doc__": f"A `PortableLayer` loaded from a portable save of a `{original}`.",
            },
        )
        keras.saving.register_keras_serializable(package="jaxlayer", name=f"Portable{original}")(cls)
        _CLASSES[original] = cls
    return cls
