"""What the adapters share: lazy framework imports with an install hint,
errors that name the right adapter, and config handling for models whose
framework object (not a function) is what must be saved.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import jax
import keras
import numpy as np

from .._config_codec import NotRegisteredError
from .._layer import JaxLayer

_FRAMEWORK_NAMES = {"flax": "Flax", "haiku": "Haiku (dm-haiku)", "equinox": "Equinox"}


def import_framework(module: str, adapter: str, extra: str) -> Any:
    """Imports `module`, or raises an ImportError naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"`{adapter}` needs {_FRAMEWORK_NAMES.get(extra, extra)} (`{module}`), "
            f"which could not be imported ({error}). Install it with "
            f'`pip install "jaxlayer[{extra}]"`.'
        ) from error


def _framework_of(obj: Any) -> str | None:
    """Which framework an object belongs to, judged without importing any."""
    if obj is None:
        return None
    classes = obj.__mro__ if isinstance(obj, type) else type(obj).__mro__
    for cls in classes:
        module = getattr(cls, "__module__", "") or ""
        if module.startswith("flax.linen"):
            return "FlaxLayer"
        if module.startswith("flax.nnx"):
            return "NnxLayer"
        if module.startswith("haiku"):
            return "HaikuLayer"
        if module.startswith("equinox"):
            return "EquinoxLayer"
    return None


def wrong_object_error(adapter: str, argument: str, expected: str, received: Any) -> TypeError:
    """A TypeError for the wrong kind of model object, naming the adapter to use."""
    right = _framework_of(received)
    if right is not None and right != adapter:
        hint = f" It looks like a model for `jaxlayer.{right}`: use that adapter instead."
    elif callable(received) and inspect.isfunction(received):
        hint = (
            " It is a plain function: wrap a Haiku function with `hk.transform` for "
            "`jaxlayer.HaikuLayer`, or pass a pure JAX function to `jaxlayer.JaxLayer`."
        )
    else:
        hint = ""
    return TypeError(
        f"`{adapter}` expects `{argument}` to be {expected}.{hint} "
        f"Received: {argument}={received!r:.200} of type {type(received).__name__}"
    )


def registered_name(obj: Any) -> str | None:
    """The Keras registration name of a class or function, or None."""
    name = keras.saving.get_registered_name(obj)
    return name if keras.saving.get_registered_object(name) is obj else None


def serialize_model_object(obj: Any, adapter: str, layer_name: str) -> dict:
    """The config record of a framework model object, checked at save time.

    As keras.layers.FlaxLayer requires of Flax modules, the object's class must
    be registered with `keras.saving.register_keras_serializable` (which in
    turn requires a `get_config()`).
    """
    cls = type(obj)
    name = registered_name(cls)
    fix = (
        "Register the class with `@keras.saving.register_keras_serializable("
        'package="my_package")` and give it `get_config()` (and `from_config()` '
        "where the constructor needs more than the config), save it portably "
        '(`save_as="portable"`), or save only the weights with '
        "`model.save_weights(...)`."
    )
    if name is None:
        raise NotRegisteredError(
            f"Cannot save {adapter} `{layer_name}`: its model class "
            f"`{cls.__qualname__}` is not registered with Keras, so `load_model` "
            f"could not recreate it. {fix}"
        )
    if hasattr(obj, "get_config"):
        config = obj.get_config()
        if not isinstance(config, dict):
            raise TypeError(
                f"`{cls.__qualname__}.get_config()` must return a dict. "
                f"Received: {type(config).__name__}"
            )
    else:
        raise NotRegisteredError(
            f"Cannot save {adapter} `{layer_name}`: `{cls.__qualname__}` has no "
            f"`get_config()`. {fix}"
        )
    return {"registered_name": name, "config": keras.saving.serialize_keras_object(config)}


def deserialize_model_object(record: dict, construct: Callable[[type, dict], Any] | None = None):
    """Recreates an object saved by `serialize_model_object`."""
    name = record["registered_name"]
    cls = keras.saving.get_registered_object(name)
    if cls is None:
        raise ValueError(
            f"Cannot load the model class registered as `{name}`: it is not "
            f"registered in this process. Import the module that defines it "
            f"(with its `@keras.saving.register_keras_serializable` decorator) "
            f"before `keras.models.load_model`."
        )
    config = keras.saving.deserialize_keras_object(record["config"])
    if hasattr(cls, "from_config"):
        return cls.from_config(config)
    if construct is not None:
        return construct(cls, config)
    return cls(**config)


def cast_like(new: Any, dtypes: Any) -> Any:
    """Casts each array leaf of `new` to the dtype at the same place in `dtypes`."""

    def cast(n, d):
        if isinstance(d, np.dtype) and hasattr(n, "dtype") and n.dtype != d:
            return n.astype(d)
        return n

    try:
        return jax.tree.map(cast, new, dtypes)
    except ValueError:  # different structures: let the layer report it
        return new


def param_count(tree: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))


class AdapterLayer(JaxLayer):
    """Base of the adapters: their config holds the framework model, not functions."""

    def _adapter_config(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def _cast_state(self, new_state: Any) -> Any:
        """`new_state` in the dtypes of the layer's state variables.

        Frameworks may return updated state in the compute dtype (bf16 under
        mixed precision); the layer's state keeps its own dtype.
        """
        dtypes = [
            np.dtype(jax.dtypes.canonicalize_dtype(keras.backend.standardize_dtype(v.dtype)))
            for v in self._state_variables
        ]
        return cast_like(new_state, self._state_layout.rebuild(dtypes))

    def _variables_spec(self) -> dict:
        # The model object saved in the config carries its own layout.
        return {}

    def _source_config(self) -> dict:
        config = self._adapter_config()
        config.update(self._variables_spec())
        return config

    @classmethod
    def _from_source_config(cls, config: dict):
        return cls(**cls._adapter_from_config(config))

    @classmethod
    def _adapter_from_config(cls, config: dict) -> dict:  # pragma: no cover
        raise NotImplementedError
