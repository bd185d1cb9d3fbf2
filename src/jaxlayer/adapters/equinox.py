"""`EquinoxLayer`: an Equinox model as a Keras layer."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import keras

from ._common import (
    AdapterLayer,
    deserialize_model_object,
    import_framework,
    param_count,
    serialize_model_object,
    wrong_object_error,
)


def _takes_key(model: Any) -> bool:
    try:
        parameters = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "key" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


@keras.saving.register_keras_serializable(package="jaxlayer")
class EquinoxLayer(AdapterLayer):
    """A Keras layer wrapping an Equinox model (`eqx.Module`).

    Inexact array leaves of the model become Keras variables named after
    their attribute paths (`layers.0.weight`): real floating ones trainable,
    complex ones non-trainable (jaxlayer differentiates real floats only,
    on every backend); every other leaf (activation functions, integer arrays, sizes) is static and
    stays in the model. For stateful models pass the `eqx.nn.State` from
    `eqx.nn.make_with_state`: its entries become non-trainable state named
    after the layer that owns them (`bn.state_index.0`), and the model is
    called as `model(x, state, key=...)` and returns `(outputs, state)`.

    Equinox models usually take one example at a time, so by default the
    model is mapped over the batch axis with `jax.vmap(..., axis_name="batch")`,
    the axis name `eqx.nn.BatchNorm(..., axis_name="batch")` expects. In
    training the model gets a fresh `key=` (one per example when mapped) if its
    `__call__` takes `key`; in inference it runs under
    `eqx.nn.inference_mode` (Dropout off, BatchNorm on running statistics).

    Args:
        model: an `eqx.Module`.
        state: the `eqx.nn.State` of a stateful model, or None.
        vmap: map the model over the leading (batch) axis of the inputs.
            Set False for models that take whole batches.
        axis_name: the name of the mapped axis (for BatchNorm and collectives).
        **kwargs: `seed`, `name`, `dtype`, `trainable` and the other JaxLayer /
            Keras layer arguments.

    Examples:
        >>> import equinox as eqx, jax, numpy as np
        >>> from jaxlayer import EquinoxLayer
        >>> layer = EquinoxLayer(eqx.nn.Linear(4, 3, key=jax.random.key(0)))
        >>> layer(np.ones((2, 4), "float32")).shape
        (2, 3)
        >>> sorted(v.name for v in layer.weights)
        ['bias', 'weight']
    """

    def __init__(
        self,
        model: Any,
        state: Any = None,
        vmap: bool = True,
        axis_name: str | None = "batch",
        **kwargs: Any,
    ) -> None:
        eqx = import_framework("equinox", "EquinoxLayer", "equinox")
        if not isinstance(model, eqx.Module):
            raise wrong_object_error("EquinoxLayer", "model", "an `equinox.Module`", model)
        if state is not None and not isinstance(state, eqx.nn.State):
            raise TypeError(
                f"`EquinoxLayer` expects `state` to be the `eqx.nn.State` returned by "
                f"`eqx.nn.make_with_state(...)`, or None. Received: state of type "
                f"{type(state).__name__}"
            )
        params, static = eqx.partition(model, eqx.is_inexact_array)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "eqx_state", state)
        object.__setattr__(self, "vmap", bool(vmap))
        object.__setattr__(self, "axis_name", axis_name)
        object.__setattr__(self, "_eqx", eqx)
        object.__setattr__(self, "_static", static)
        object.__setattr__(self, "_takes_key", _takes_key(model))
        object.__setattr__(self, "_state_indices", self._find_state_indices(model, state))
        state_tree = None
        if state is not None:
            state_tree = {name: state.get(index) for name, index in self._state_indices}

        def call_fn(params, state, rng, inputs, training):
            return self._apply(params, state, rng, inputs, training)

        super().__init__(
            call_fn, params=params, state=state_tree if state is not None else {}, **kwargs
        )

    def _find_state_indices(self, model: Any, state: Any) -> list:
        if state is None:
            return []
        eqx = self._eqx
        is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
        found = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_index)[0]
        indices = []
        for path, leaf in found:
            if is_index(leaf):
                name = jax.tree_util.keystr(tuple(path), simple=True, separator=".")
                indices.append((name or "state", leaf))
        _, markers = state.tree_flatten()
        if {index.marker for _, index in indices} != set(markers):
            raise ValueError(
                "`EquinoxLayer`: `state` does not belong to `model`: their "
                "`eqx.nn.StateIndex` entries differ. Pass the `(model, state)` pair "
                "returned by one `eqx.nn.make_with_state(...)` call."
            )
        return indices

    # ------------------------------------------------------------ running

    def _to_eqx_state(self, state_tree: Any) -> Any:
        # Rebuilt from the State's PyTree children (one per StateIndex marker)
        # rather than with `State.set`, which would use up the user's State and
        # reject values whose weak typing differs from the initial ones.
        _, markers = self.eqx_state.tree_flatten()
        by_marker = {index.marker: state_tree[name] for name, index in self._state_indices}
        return type(self.eqx_state).tree_unflatten(markers, [by_marker[m] for m in markers])

    def _apply(self, params, state, rng, inputs, training):
        eqx = self._eqx
        model = eqx.nn.inference_mode(eqx.combine(params, self._static), value=not training)
        stateful = self.eqx_state is not None
        eqx_state = self._to_eqx_state(state) if stateful else None
        use_key = self._takes_key and rng is not None

        def single(x, st, key):
            kwargs = {"key": key} if use_key else {}
            if stateful:
                return model(x, st, **kwargs)
            return model(x, **kwargs), None

        if self.vmap:
            batch = jax.tree.leaves(inputs)[0].shape[0]
            keys = jax.random.split(rng, batch) if use_key and rng is not None else None
            outputs, new_state = jax.vmap(
                single,
                in_axes=(0, None, 0 if use_key else None),
                out_axes=(0, None),
                axis_name=self.axis_name,
            )(inputs, eqx_state, keys)
        else:
            outputs, new_state = single(inputs, eqx_state, rng)
        if not stateful or new_state is None:
            return outputs, state
        new_tree = {name: new_state.get(index) for name, index in self._state_indices}
        return outputs, self._cast_state(new_tree)

    # ------------------------------------------------------- pure JAX access

    def get_model(self) -> Any:
        """The model with the layer's current parameters (`eqx.combine`)."""
        return self._eqx.combine(self.get_params(), self._static)

    def get_eqx_state(self) -> Any:
        """The layer's current state as an `eqx.nn.State` (None if stateless)."""
        if self.eqx_state is None:
            return None
        return self._to_eqx_state(self.get_state())

    def _lora_out_first(self, variable: Any) -> bool:
        # Equinox stores `Linear.weight` as (out, in) and conv weights as
        # (out, in, *kernel): the output axis is the first.
        return True

    def _checkpoint_template(self) -> Any:
        # What `eqx.tree_serialise_leaves` writes: the model, with its state.
        model = self.get_model()
        return model if self.eqx_state is None else (model, self.get_eqx_state())

    def _checkpoint_source(self, source: Any) -> Any:
        # A module (or `(model, state)`) as the layer names it: the inexact
        # arrays by attribute path, the state by the layer owning it.
        eqx = self._eqx
        state = None
        if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], eqx.nn.State):
            source, state = source
        if not isinstance(source, eqx.Module):
            return source
        params, _ = eqx.partition(source, eqx.is_inexact_array)
        if state is None:
            return params
        try:
            return [params, {name: state.get(index) for name, index in self._state_indices}]
        except Exception as error:
            raise ValueError(
                f"`load_checkpoint`: the `eqx.nn.State` passed does not belong to this layer's "
                f"model ({error}). Pass the state's arrays as a dict named like "
                f"`[v.name for v in layer.non_trainable_weights]`."
            ) from error

    def count_framework_params(self) -> int:
        """The number of inexact array values in the model."""
        params, _ = self._eqx.partition(self.model, self._eqx.is_inexact_array)
        return param_count(params)

    # ------------------------------------------------------------- config

    def _adapter_config(self) -> dict:
        return {
            "model": serialize_model_object(self.model, "EquinoxLayer", self.name),
            "vmap": self.vmap,
            "axis_name": self.axis_name,
        }

    @classmethod
    def _adapter_from_config(cls, config: dict) -> dict:
        # A registered model class's `from_config` returns the model, or
        # `(model, state)` for stateful models.
        model = deserialize_model_object(config["model"])
        if isinstance(model, tuple):
            model, config["state"] = model
        config["model"] = model
        return config
