"""`HaikuLayer`: a transformed Haiku function as a Keras layer."""

from __future__ import annotations

import inspect
from typing import Any

import keras

from .._config_codec import NotRegisteredError, deserialize_function
from .._layer import JaxLayer
from ._common import (
    AdapterLayer,
    import_framework,
    registered_name,
    wrong_object_error,
)

_FLAG_NAMES = ("training", "is_training")


@keras.saving.register_keras_serializable(package="jaxlayer")
class HaikuLayer(AdapterLayer):
    """A Keras layer wrapping the result of `hk.transform` / `hk.transform_with_state`.

    Which transform was used (with or without state, with or without
    `hk.without_apply_rng`) is detected. The wrapped function's argument names
    do not matter: its first argument receives the layer's inputs (an array or
    a PyTree), and its flag argument, `training` or `is_training` (or the one
    named by `training_argument`), receives Keras's training flag. Parameters
    are trainable variables named after Haiku's module paths
    (`mlp.linear_0.w`); state (e.g. BatchNorm statistics) is non-trainable
    and updated by each training call; `hk.next_rng_key()` gets a fresh key on
    every training call (`rng` is None in inference).

    `model.save` refers to the transformed function when it is a registered
    Keras serializable (`@keras.saving.register_keras_serializable()` on the
    function given to `hk.transform`), and otherwise stores the model as
    `jax.export` programs that load without Haiku (see `save_as`).

    Args:
        transformed: an `hk.Transformed` or `hk.TransformedWithState`.
        training_argument: the name of the argument that receives the training
            flag, if it is neither `training` nor `is_training`.
        params: optional initial parameters (as returned by `transformed.init`).
        state: optional initial state (`transform_with_state` only).
        **kwargs: `seed`, `name`, `dtype`, `trainable` and the other JaxLayer /
            Keras layer arguments.

    Examples:
        >>> import haiku as hk, numpy as np
        >>> from jaxlayer import HaikuLayer
        >>> layer = HaikuLayer(hk.transform(lambda x: hk.Linear(3)(x)))
        >>> layer(np.ones((2, 4), "float32")).shape
        (2, 3)
        >>> sorted(v.name for v in layer.weights)
        ['linear.b', 'linear.w']
    """

    def __init__(
        self,
        transformed: Any,
        training_argument: str | None = None,
        params: Any = None,
        state: Any = None,
        **kwargs: Any,
    ) -> None:
        hk = import_framework("haiku", "HaikuLayer", "haiku")
        if not isinstance(transformed, (hk.Transformed, hk.TransformedWithState)):
            raise wrong_object_error(
                "HaikuLayer",
                "transformed",
                "the result of `hk.transform(f)` or `hk.transform_with_state(f)`",
                transformed,
            )
        with_state = isinstance(transformed, hk.TransformedWithState)
        function = getattr(transformed.apply, "_original_fn", None)
        apply_rng = self._apply_takes_rng(transformed, function, with_state)
        flag = self._flag_argument(function, training_argument)
        if state is not None and not with_state:
            raise ValueError(
                "`HaikuLayer` got `state=`, but the model was transformed with "
                "`hk.transform`, which has no state. Use `hk.transform_with_state` "
                "or drop `state=`."
            )
        object.__setattr__(self, "transformed", transformed)
        object.__setattr__(self, "training_argument", training_argument)
        object.__setattr__(self, "_function", function)
        object.__setattr__(self, "_with_state", with_state)
        object.__setattr__(self, "_apply_rng", apply_rng)

        call_fn, init_fn = _model_functions(transformed, flag, with_state, apply_rng)
        if params is None and state is not None:
            raise ValueError("`HaikuLayer` got `state=` without `params=`; pass both.")
        if params is not None and with_state and state is None:
            state = {}
        super().__init__(call_fn, init_fn, params=params, state=state, **kwargs)

    @staticmethod
    def _apply_takes_rng(transformed: Any, function: Any, with_state: bool) -> bool:
        # Haiku copies the function's signature onto `apply`, after `params`
        # (and `state`) and, unless `hk.without_apply_rng` was used, `rng`.
        try:
            apply_count = len(inspect.signature(transformed.apply).parameters)
            fn_count = len(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            names = inspect.signature(transformed.apply).parameters
            return "rng" in names
        return apply_count - fn_count == (3 if with_state else 2)

    @staticmethod
    def _flag_argument(function: Any, training_argument: str | None) -> str | None:
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            return training_argument
        names = [p.name for p in parameters]
        if not parameters or parameters[0].kind in (
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            raise ValueError(
                f"`HaikuLayer`: the transformed function must take the inputs as "
                f"its first argument. Received a function with arguments "
                f"{names}. Pack several inputs into one tuple or dict argument."
            )
        if training_argument is not None:
            if training_argument not in names[1:]:
                raise ValueError(
                    f"`HaikuLayer`: `training_argument={training_argument!r}` is not an "
                    f"argument of the transformed function (after the inputs). "
                    f"Its arguments are {names}."
                )
            flag = training_argument
        else:
            flag = next((n for n in _FLAG_NAMES if n in names[1:]), None)
        others = [
            p.name
            for p in parameters[1:]
            if p.name != flag
            and p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if others:
            raise ValueError(
                f"`HaikuLayer`: the transformed function has required arguments "
                f"{others} besides the inputs and the training flag; the layer "
                f"only passes the inputs (first argument) and the flag (`training`, "
                f"`is_training`, or the name given as `training_argument=`). Pack "
                f"extra inputs into the first argument, give them defaults, or "
                f"pass `training_argument=`. Received arguments: {names}."
            )
        return flag

    # ------------------------------------------------------------- config

    def _variables_spec(self) -> dict:
        return JaxLayer._variables_spec(self)

    def _adapter_config(self) -> dict:
        if self._function is None or registered_name(self._function) is None:
            raise NotRegisteredError(
                f"Cannot save HaikuLayer `{self.name}`: the function given to "
                f"`hk.transform` "
                f"({getattr(self._function, '__qualname__', self._function)!r}) is "
                f"not registered with Keras, so `load_model` could not transform "
                f"it again. Decorate that module-level function with "
                f'`@keras.saving.register_keras_serializable(package="my_package")`, '
                f'save it portably (`save_as="portable"`), or save only the weights '
                f"with `model.save_weights(...)`."
            )
        return {
            "function": keras.saving.serialize_keras_object(self._function),
            "with_state": self._with_state,
            "apply_rng": self._apply_rng,
            "training_argument": self.training_argument,
        }

    @classmethod
    def _adapter_from_config(cls, config: dict) -> dict:
        import haiku as hk

        function = deserialize_function(config.pop("function"))
        with_state = config.pop("with_state")
        apply_rng = config.pop("apply_rng")
        if with_state:
            stateful = hk.transform_with_state(function)
            config["transformed"] = stateful if apply_rng else hk.without_apply_rng(stateful)
        else:
            stateless = hk.transform(function)
            config["transformed"] = stateless if apply_rng else hk.without_apply_rng(stateless)
        return config


def _model_functions(transformed: Any, flag: str | None, with_state: bool, apply_rng: bool):
    """`call_fn` and `init_fn` for a transform.

    `call_fn` takes exactly what the transform needs (arguments are bound by
    name): `state` only with state, `rng` only with an rng.
    """
    apply = transformed.apply

    def flag_kwargs(training):
        return {flag: training} if flag else {}

    def init_fn(rng, inputs):
        return transformed.init(rng, inputs, **flag_kwargs(True))

    def call_with_state_and_rng(params, state, rng, inputs, training):
        return apply(params, state, rng, inputs, **flag_kwargs(training))

    def call_with_state(params, state, inputs, training):
        return apply(params, state, inputs, **flag_kwargs(training))

    def call_with_rng(params, rng, inputs, training):
        return apply(params, rng, inputs, **flag_kwargs(training))

    def call_stateless(params, inputs, training):
        return apply(params, inputs, **flag_kwargs(training))

    if with_state:
        return (call_with_state_and_rng if apply_rng else call_with_state), init_fn
    return (call_with_rng if apply_rng else call_stateless), init_fn
