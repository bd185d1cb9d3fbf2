"""`NnxLayer`: a Flax NNX module as a Keras layer."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import keras
import numpy as np

from .._checkpoint import deep_merge, nnx_state_name
from ._common import (
    AdapterLayer,
    deserialize_model_object,
    import_framework,
    param_count,
    serialize_model_object,
    wrong_object_error,
)


def _plain_path(path: Any) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key)


@keras.saving.register_keras_serializable(package="jaxlayer")
class NnxLayer(AdapterLayer):
    """A Keras layer wrapping a constructed Flax NNX module.

    `nnx.Param` variables become trainable Keras variables; every other
    variable (`BatchStat`, RNG stream keys and counters, custom `Variable`
    types) is non-trainable state, updated by each call. Keras's training flag
    puts the module in train or eval mode for the call (Dropout on or off,
    BatchNorm on batch or running statistics), on every backend, without
    `module.train()` / `module.eval()`. In training the module's RNG streams
    are reseeded from the layer's `seed` on each call, so the same seed gives
    the same dropout masks.

    RNG keys are stored as their key data (Keras variables cannot hold typed
    keys), and uint32 values (key data, RNG counters) bit-cast to int32, which
    every backend supports; `get_module()` turns them back.

    Args:
        module: a constructed `flax.nnx.Module`.
        **kwargs: `seed`, `name`, `dtype`, `trainable` and the other JaxLayer /
            Keras layer arguments.

    Examples:
        >>> from flax import nnx
        >>> import numpy as np
        >>> from jaxlayer import NnxLayer
        >>> layer = NnxLayer(nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
        >>> layer(np.ones((2, 4), "float32")).shape
        (2, 3)
        >>> sorted(v.name for v in layer.weights)
        ['bias', 'kernel']
    """

    def __init__(self, module: Any, **kwargs: Any) -> None:
        nnx = import_framework("flax.nnx", "NnxLayer", "flax")
        if not isinstance(module, nnx.Module):
            raise wrong_object_error(
                "NnxLayer", "module", "a constructed `flax.nnx.Module`", module
            )
        graphdef, params_state, rest_state = nnx.split(module, nnx.Param, ...)
        params = params_state.to_pure_dict()
        rest = rest_state.to_pure_dict()
        leaves = jax.tree_util.tree_flatten_with_path(rest)[0]
        counters = {
            tuple(path)
            for path, variable in nnx.to_flat_state(rest_state)
            if isinstance(variable, nnx.RngCount)
        }
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "_nnx", nnx)
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_templates", (params_state, rest_state))
        object.__setattr__(
            self,
            "_key_impls",
            {_plain_path(p): jax.random.key_impl(x) for p, x in leaves if _is_key(x)},
        )
        object.__setattr__(
            self,
            "_unsigned_paths",
            {_plain_path(p) for p, x in leaves if _is_key(x) or x.dtype == np.uint32},
        )
        object.__setattr__(self, "_counter_paths", counters)
        state = self._to_storage(rest)

        def call_fn(params, state, rng, inputs, training):
            return self._apply(params, state, rng, inputs, training)

        super().__init__(call_fn, params=params, state=state, **kwargs)

    # ------------------------------------------------------------- keys

    def _to_storage(self, tree: Any) -> Any:
        """Typed keys as their key data; uint32 leaves bit-cast to int32.

        Keras variables cannot hold typed keys, and uint32 is poorly supported
        by some backends (torch); the bits are kept exactly.
        """

        def convert(leaf):
            if _is_key(leaf):
                leaf = jax.random.key_data(leaf)
            if leaf.dtype == np.uint32:
                leaf = jax.lax.bitcast_convert_type(leaf, np.int32)
            return leaf

        return jax.tree.map(convert, tree)

    def _from_storage(self, tree: Any, rng: Any) -> Any:
        """Undoes `_to_storage`.

        With `rng` (training), every RNG stream is reseeded from it and its
        counter reset, so the layer's seed alone decides the random numbers.
        """
        index = {path: i for i, path in enumerate(self._key_impls)}

        def convert(path, leaf):
            path = _plain_path(path)
            if path in self._unsigned_paths:
                leaf = jax.lax.bitcast_convert_type(jax.numpy.asarray(leaf, np.int32), np.uint32)
            if rng is not None and path in self._counter_paths:
                leaf = jax.numpy.zeros_like(leaf)
            if path not in self._key_impls:
                return leaf
            if rng is not None:
                leaf = jax.random.bits(jax.random.fold_in(rng, index[path]), leaf.shape, np.uint32)
            return jax.random.wrap_key_data(leaf, impl=self._key_impls[path])

        return jax.tree_util.tree_map_with_path(convert, tree)

    # ------------------------------------------------------------ running

    def _apply(self, params, state, rng, inputs, training):
        nnx = self._nnx
        module = self._merge(params, self._from_storage(state, rng if training else None))
        # Train/eval is static configuration of the module; set it per call.
        if training:
            module.train()
        else:
            module.eval()
        outputs = module(inputs)
        _, _, new_rest = nnx.split(module, nnx.Param, ...)
        new_state = self._to_storage(new_rest.to_pure_dict())
        return outputs, self._cast_state(new_state)

    # ------------------------------------------------------- pure JAX access

    def get_module(self) -> Any:
        """A copy of the wrapped module holding the layer's current values."""
        return self._merge(self.get_params(), self._from_storage(self.get_state(), None))

    def _merge(self, params: Any, rest: Any) -> Any:
        # Fresh State objects (created in the current trace) filled with the
        # given values, merged with the GraphDef into a new module.
        states = []
        for template, values in zip(self._templates, (params, rest), strict=True):
            state = jax.tree.map(lambda x: x, template)
            self._nnx.replace_by_pure_dict(state, values)
            states.append(state)
        return self._nnx.merge(self._graphdef, *states)

    def _checkpoint_tree(self, keep_global: bool) -> Any:
        # The module's whole state as a pure dict (`nnx.State.to_pure_dict`),
        # RNG keys as their key data.
        params, state = self._checkpoint_parts(keep_global)
        return deep_merge(params, state)

    def _checkpoint_name(self, name: str) -> str:
        return nnx_state_name(name)

    def _checkpoint_source(self, source: Any) -> Any:
        # A module or an `nnx.State` (typed RNG keys included) as the layer stores it.
        nnx = self._nnx
        if isinstance(source, nnx.Module):
            source = nnx.state(source)
        if isinstance(source, nnx.State):
            source = self._to_storage(source.to_pure_dict())
        return source

    def count_framework_params(self) -> int:
        """The number of `nnx.Param` values, as the framework counts them."""
        return param_count(self._nnx.state(self.module, self._nnx.Param))

    # ------------------------------------------------------------- config

    def _adapter_config(self) -> dict:
        return {"module": serialize_model_object(self.module, "NnxLayer", self.name)}

    @classmethod
    def _adapter_from_config(cls, config: dict) -> dict:
        def construct(module_cls, module_config):
            from flax import nnx

            if (
                "rngs" in inspect.signature(module_cls.__init__).parameters
                and "rngs" not in module_config
            ):
                # The values are replaced by the saved weights.
                module_config = dict(module_config, rngs=nnx.Rngs(0))
            return module_cls(**module_config)

        config["module"] = deserialize_model_object(config["module"], construct)
        return config
