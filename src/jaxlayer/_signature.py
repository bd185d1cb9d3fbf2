"""Validating `call_fn` / `init_fn` signatures and binding their arguments by name.

The layer never calls the user's functions with keyword arguments: it builds a
positional argument list in the order of the function's own signature, so
positional-only parameters and wrappers that forward `*args` internally (as
Haiku's transformed functions do) work unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

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
