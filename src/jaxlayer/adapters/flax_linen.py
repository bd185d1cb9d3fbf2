"""`FlaxLayer`: a Flax Linen module as a Keras layer (drop-in for keras.layers.FlaxLayer)."""

from __future__ import annotations

import inspect
import re
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import keras
import numpy as np

from .._checkpoint import deep_merge
from .._config_codec import deserialize_function, serialize_function
from .._layer import JaxLayer
from ._common import (
    AdapterLayer,
    deserialize_model_object,
    import_framework,
    serialize_model_object,
    wrong_object_error,
)

_MISSING_STREAM = re.compile(r'needs PRNG for "([^"]+)"')


def _stream_key(rng: Any, name: str) -> Any:
    # A per-stream key that does not depend on which other streams exist.
    # "dropout" gets the drawn key itself, as keras.layers.FlaxLayer gives it:
    # the same seed then gives the same dropout masks as Keras's layer.
    if name == "dropout":
        return rng
    return jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _split_variables(variables: Any) -> tuple[Any, Any]:
    """`module.init`'s output as `(params, state)`: "params" vs the rest."""
    if variables is None:
        return None, None
    variables = dict(variables)
    params = {"params": variables.pop("params")} if "params" in variables else {}
    return params, variables


@keras.saving.register_keras_serializable(package="jaxlayer")
class FlaxLayer(AdapterLayer):
    """A Keras layer wrapping a Flax Linen module.

    Takes the same arguments as `keras.layers.FlaxLayer` and behaves the same:
    the "params" collection is trainable, every other collection (e.g.
    `batch_stats`) is non-trainable state that `apply` may mutate, and a
    `training` argument of the method receives Keras's training flag. Beyond
    it: every RNG stream the module asks for with `self.make_rng(name)` gets a
    fresh key in training (found by tracing the module), streams can be asked
    for in inference too, inputs keep their dtype at init (integer ids for
    `nn.Embed`), and non-"params" collections keep their own dtype under mixed
    precision. Runs on every Keras backend JaxLayer supports.

    Args:
        module: a `flax.linen.Module` instance.
        method: the method to run, as in `Module.apply(method=...)`: None
            (`__call__`), a method name, a bound method, or a function taking
            the module as its first argument.
        variables: optional variables as returned by `module.init` (a
            "params" collection and any others). If None, `module.init` runs
            when the layer is built.
        rng_streams: names of the RNG streams that get a fresh key in
            training; None (the default) gives one to every stream the module
            uses.
        inference_rng_streams: names of streams that also get a fresh key in
            inference (by default no stream does, as in keras.layers.FlaxLayer).
        **kwargs: `seed`, `name`, `dtype`, `trainable` and the other JaxLayer /
            Keras layer arguments.

    Examples:
        >>> import flax.linen as nn, numpy as np
        >>> from jaxlayer import FlaxLayer
        >>> layer = FlaxLayer(nn.Dense(3))
        >>> layer(np.ones((2, 4), "float32")).shape
        (2, 3)
        >>> sorted(v.name for v in layer.weights)
        ['params.bias', 'params.kernel']
    """

    def __init__(
        self,
        module: Any,
        method: Any = None,
        variables: Any = None,
        rng_streams: Sequence[str] | None = None,
        inference_rng_streams: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        linen = import_framework("flax.linen", "FlaxLayer", "flax")
        if not isinstance(module, linen.Module):
            raise wrong_object_error("FlaxLayer", "module", "a `flax.linen.Module`", module)
        target = _method_target(module, method)
        _check_stream_names(rng_streams, inference_rng_streams)
        takes_training = "training" in inspect.signature(target or module.__call__).parameters
        # Plain attributes: Keras would wrap lists into tracked containers.
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "rng_streams", None if rng_streams is None else list(rng_streams))
        object.__setattr__(self, "inference_rng_streams", list(inference_rng_streams))
        object.__setattr__(self, "_apply_method", target)
        object.__setattr__(self, "_linen", linen)
        object.__setattr__(
            self,
            "_streams",
            {True: self.rng_streams, False: list(self.inference_rng_streams)},
        )
        params, state = _split_variables(variables)
        if variables is not None:
            from flax.core import unfreeze

            params = unfreeze(params)
            state = unfreeze(state)

        def call_fn(params, state, rng, inputs, training):
            return self._apply(params, state, rng, inputs, training, takes_training)

        def init_fn(rng, inputs, training):
            extra = {"training": training} if takes_training else {}
            variables = module.init(rng, inputs, method=target, **extra)
            return _split_variables(_unfreeze(variables))

        super().__init__(call_fn, init_fn, params=params, state=state, **kwargs)

    # -------------------------------------------------------------- running

    def _apply(self, params, state, rng, inputs, training, takes_training):
        variables = {**params, **state}
        extra = {"training": training} if takes_training else {}
        mutable = self._linen.DenyList(["params"])

        def apply(variables, inputs, rngs):
            return self.module.apply(
                variables, inputs, rngs=rngs, method=self._apply_method, mutable=mutable, **extra
            )

        streams = self._streams[training] if rng is not None else []
        if streams is None:
            streams = self._discover_streams(apply, variables, inputs, training)
        outputs, mutated = apply(
            variables, inputs, {name: _stream_key(rng, name) for name in streams}
        )
        new_state = {name: mutated.get(name, old) for name, old in state.items()}
        return outputs, self._cast_state(new_state)

    def _discover_streams(self, apply, variables, inputs, training) -> list:
        """The RNG streams `apply` asks for, found by abstract evaluation."""
        from flax.errors import InvalidRngError

        streams: list = []
        key = jax.ShapeDtypeStruct((2,), np.uint32)
        while True:
            try:
                jax.eval_shape(apply, variables, inputs, {name: key for name in streams})
            except InvalidRngError as error:
                match = _MISSING_STREAM.search(str(error))
                if match is None or match.group(1) in streams:
                    raise
                streams.append(match.group(1))
                continue
            self._streams[training] = streams
            return streams

    def _get_call_rng(self, training: bool) -> Any:
        if training or self.inference_rng_streams:
            return self._get_call_seed()
        return None

    def _get_init_rng(self) -> Any:
        # Streams other than these fall back to "params" in `init`.
        return {"params": self._get_init_seed(), "dropout": self._get_init_seed()}

    # ---------------------------------------------------------- checkpoints

    def _checkpoint_tree(self, keep_global: bool) -> Any:
        # Flax's own `variables` dict: {"params": ..., "batch_stats": ...}.
        params, state = self._checkpoint_parts(keep_global)
        return deep_merge(params, state)

    # --------------------------------------------------------------- config

    def _variables_spec(self) -> dict:
        return JaxLayer._variables_spec(self)

    @classmethod
    def _with_saved_variables(cls, config: dict, params: Any, state: Any) -> dict:
        # The saved layout is Flax's `variables` dict, split in two.
        return dict(config, variables=deep_merge(params or {}, state or {}))

    def _adapter_config(self) -> dict:
        method = self.method
        if method is not None and not isinstance(method, str):
            name = getattr(method, "__name__", None)
            owner = getattr(method, "__self__", None)
            # Bound to this module or to one equal to it (Flax modules are
            # dataclasses, compared by their fields, as Keras compares them):
            # the method is the module's own, saved by name.
            bound_to_module = owner is self.module or (
                type(owner) is type(self.module) and _modules_equal(owner, self.module)
            )
            defined_on_class = name is not None and getattr(type(self.module), name, None) is method
            if bound_to_module or defined_on_class:
                method = name
            else:
                method = serialize_function(method, "method", self.name)
        return {
            "module": serialize_model_object(self.module, "FlaxLayer", self.name),
            "method": method,
            "rng_streams": self.rng_streams,
            "inference_rng_streams": self.inference_rng_streams,
        }

    @classmethod
    def _adapter_from_config(cls, config: dict) -> dict:
        config["module"] = deserialize_model_object(config["module"])
        if isinstance(config.get("method"), dict):
            config["method"] = deserialize_function(config["method"])
        return config


def _modules_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - modules that cannot be compared are not equal
        return False


def _unfreeze(variables: Any) -> Any:
    from flax.core import unfreeze

    return unfreeze(variables)


def _method_target(module: Any, method: Any) -> Any:
    """The callable `method` names (None: the module's `__call__`), checked."""
    if isinstance(method, str) and not callable(getattr(module, method, None)):
        raise ValueError(
            f"`FlaxLayer`: the module `{type(module).__name__}` has no method "
            f"`{method}`. Pass the name of one of its methods, a method, or a "
            f"function taking the module first. Received: method={method!r}"
        )
    target = getattr(module, method) if isinstance(method, str) else method
    if target is not None and not callable(target):
        raise TypeError(
            f"`FlaxLayer` expects `method` to be None, a method name or a "
            f"callable. Received: method={method!r}"
        )
    return target


def _check_stream_names(rng_streams: Any, inference_rng_streams: Any) -> None:
    for argument, streams in (
        ("rng_streams", rng_streams),
        ("inference_rng_streams", inference_rng_streams),
    ):
        if streams is not None and (
            isinstance(streams, str) or not all(isinstance(s, str) for s in streams)
        ):
            raise TypeError(
                f"`FlaxLayer` expects `{argument}` to be a list of stream names "
                f'such as ["dropout", "noise"]. Received: {argument}={streams!r}'
            )
