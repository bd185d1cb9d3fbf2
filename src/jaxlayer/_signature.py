"""Validating `call_fn` / `init_fn` and the layer's arguments, binding the
functions' arguments by name, and splitting what `init_fn` returns.

The layer never calls the user's functions with keyword arguments: it builds a
positional argument list in the order of the function's own signature, so
positional-only parameters and wrappers that forward `*args` internally (as
Haiku's transformed functions do) work unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ._variables import is_array_leaf

CALL_FN_ARGUMENTS = ("params", "state", "rng", "inputs", "training")
INIT_FN_ARGUMENTS = ("rng", "inputs", "training")


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if name else repr(fn)


def _quoted(names) -> str:
    return ", ".join(f"`{n}`" for n in names)


class FunctionSignature:
    """The argument names of a user function, validated against an allowed set.

    Args:
        fn: the user's function.
        role: `"call_fn"` or `"init_fn"`, used in error messages.
        allowed: the names the function may take.
    """

    def __init__(self, fn: Callable, role: str, allowed: tuple[str, ...]):
        if not callable(fn):
            raise TypeError(
                f"`{role}` must be a callable (a function taking "
                f"{_quoted(allowed)} by name). Received: {role}={fn!r} "
                f"of type {type(fn).__name__}."
            )
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Cannot read the signature of `{role}` ({_describe(fn)}): "
                f"{error}. Wrap it in a Python function whose arguments are "
                f"named from {_quoted(allowed)}. Received: {role}={fn!r}"
            ) from None
        names = []
        for parameter in parameters.values():
            if parameter.kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                star = "*" if parameter.kind is inspect.Parameter.VAR_POSITIONAL else "**"
                raise ValueError(
                    f"`{role}` ({_describe(fn)}) takes `{star}{parameter.name}`; "
                    f"arguments are bound by exact name, so every argument must "
                    f"be named explicitly. Allowed names: {_quoted(allowed)}. "
                    f"Write a wrapper with explicit arguments, e.g. "
                    f"`def {role}(inputs): ...`. Received: {role}={_describe(fn)}"
                )
            if parameter.name not in allowed:
                raise ValueError(
                    f"`{role}` ({_describe(fn)}) has an unsupported argument "
                    f"`{parameter.name}`. Allowed names: {_quoted(allowed)} "
                    f"(`inputs` is required, the others optional). Rename it or "
                    f"wrap the function (see 'Adapting other signatures' in "
                    f"docs/frameworks/jax.md). Received: {role}={_describe(fn)}"
                )
            names.append(parameter.name)
        if "inputs" not in names:
            raise ValueError(
                f"`{role}` ({_describe(fn)}) has no `inputs` argument. The model's "
                f"inputs arrive through one argument named `inputs` (pack several "
                f"inputs into a tuple or dict). Received arguments: "
                f"{_quoted(names) or 'none'}."
            )
        self.fn = fn
        self.role = role
        self.names = tuple(names)

    def takes(self, name: str) -> bool:
        return name in self.names

    def bind(self, **values: Any) -> list:
        """Returns the positional argument list in the function's own order."""
        return [values[name] for name in self.names]

    def __call__(self, **values: Any) -> Any:
        return self.fn(*self.bind(**values))

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"FunctionSignature({_describe(self.fn)}{self.names})"


def describe(fn: Any) -> str:
    """A short human-readable name for a user function."""
    return _describe(fn)


def check_layer_arguments(
    call_fn: Callable, init_fn: Callable | None, params: Any, state: Any, seed: Any
) -> tuple[FunctionSignature, FunctionSignature | None]:
    """Checks `JaxLayer`'s model arguments; returns the two signatures.

    Raises before anything is built: unusable functions, a `seed` that is not
    an int, nothing to initialise `params`/`state` from, or `params`/`state`
    given to a `call_fn` that cannot take them.
    """
    signature = FunctionSignature(call_fn, "call_fn", CALL_FN_ARGUMENTS)
    init_signature = None
    if init_fn is not None:
        init_signature = FunctionSignature(init_fn, "init_fn", INIT_FN_ARGUMENTS)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(
            f"`seed` must be an int or None (it seeds the Keras SeedGenerator "
            f"that draws the `rng` keys). Received: seed={seed!r} of type "
            f"{type(seed).__name__}"
        )
    takes_variables = signature.takes("params") or signature.takes("state")
    if init_fn is None and params is None and state is None and takes_variables:
        raise ValueError(
            f"`call_fn` ({describe(call_fn)}) takes "
            f"{'`params`' if signature.takes('params') else '`state`'}, but "
            f"`init_fn`, `params` and `state` are all None, so the layer has "
            f"nothing to initialise them from. Pass `init_fn=` (called at "
            f"build time) or the initial `params=` / `state=`."
        )
    for name, value in (("params", params), ("state", state)):
        if value is not None and not signature.takes(name):
            raise ValueError(
                f"`{name}` was given but `call_fn` ({describe(call_fn)}) has no "
                f"`{name}` argument, so it could never be used. Add a `{name}` "
                f"argument to `call_fn` or drop `{name}=`."
            )
    return signature, init_signature


def split_init_result(result: Any, init_fn: Callable | None, call_fn: Callable, takes_state: bool) -> tuple[Any, Any]:
    """`init_fn`'s result as `(params, state)`, checked against `call_fn`'s arguments."""
    fn = describe(init_fn)
    if takes_state:
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ValueError(
                f"`init_fn` ({fn}) must return `(params, state)` because "
                f"`call_fn` ({describe(call_fn)}) takes a `state` argument; "
                f"it returned a {type(result).__name__}. Return the initial "
                f"state too (use `hk.transform_with_state` for Haiku models), or "
                f"remove `state` from `call_fn`."
            )
        return result[0], result[1]
    if _looks_like_params_and_state(result):
        raise ValueError(
            f"`init_fn` ({fn}) returned a pair of containers, which looks like "
            f"`(params, state)`, but `call_fn` ({describe(call_fn)}) has "
            f"no `state` argument. Add `state` to `call_fn` (returning "
            f"`(outputs, new_state)`), or return the params alone."
        )
    return result, None


def _looks_like_params_and_state(result: Any) -> bool:
    # `(params, state)` as Haiku/Flax return them: a pair of containers.
    return (
        isinstance(result, tuple)
        and len(result) == 2
        and all(isinstance(part, (dict, list)) or part is None for part in result)
        and not any(is_array_leaf(part) for part in result)
    )
