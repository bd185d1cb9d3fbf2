"""LoRA on any JAX model: `enable_lora`, `merge_lora`, adapter-only files.

`LoraHooks` is mixed into `JaxLayer`. `enable_lora` picks param leaves by
name, freezes them and adds two float32 variables per leaf (`<name>.lora_a`,
`(fan_in, rank)`, and `<name>.lora_b`, `(rank, fan_out)`); the layer's
program hands `call_fn` `W + (alpha / rank) * A @ B` (see
`_param_transform`), and computes a Dense use of it in low rank (see
`_low_rank`). The forms themselves are kept by `_param_forms`.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import keras
import numpy as np

from ._low_rank import lora_delta
from ._param_forms import ParamForms
from ._param_transform import dequantize, quantize_int8

LORA_SUFFIX = ".lora.h5"


class LoraHooks(ParamForms):
    """`enable_lora`, `merge_lora` and LoRA weight files (a mixin)."""

    @property
    def lora_rank(self) -> int | None:
        """The LoRA rank, or None before `enable_lora`."""
        return None if self._lora is None else self._lora[0]

    def enable_lora(
        self,
        rank: int,
        *,
        target: str | None = None,
        lora_alpha: float | None = None,
        a_initializer: Any = "he_uniform",
        b_initializer: Any = "zeros",
        freeze_others: bool = False,
    ) -> None:
        """Adds LoRA adapters to the params whose names `target` selects.

        Each selected param `W` (a float param with at least 2 dimensions,
        or an int8 kernel after `quantize`) is frozen, and two float32
        variables are added: `<name>.lora_a` of shape `(fan_in, rank)` and
        `<name>.lora_b` of shape `(rank, fan_out)`. `call_fn` then receives
        `W + (lora_alpha / rank) * A @ B`, computed inside the compiled
        program; where `call_fn` multiplies an input by it along its input
        axis (a Dense layer), the program computes `x @ W` plus the
        low-rank product instead, so `W` gets no weight gradient. The output axis is the last one (Flax, Haiku, NNX and plain
        `JaxLayer` kernels `(..., in, out)`) or, for `EquinoxLayer`, the
        first (`Linear.weight` is `(out, in)`); every other axis is `fan_in`.
        B starts at zero, so the outputs are unchanged until training.

        Compile the model again afterwards (`model.compile(...)`): Keras's
        compiled functions hold the old trainable variables.

        Args:
            rank: the adapters' rank, at least 1.
            target: a regex searched (`re.search`) in the params' names
                (`params.Dense_0.kernel`); None selects every candidate.
            lora_alpha: the scale numerator; defaults to `rank`.
            a_initializer: Keras initializer of A.
            b_initializer: Keras initializer of B.
            freeze_others: also freeze every param that gets no adapter.

        Raises:
            ValueError: the layer is not built, LoRA is already enabled,
                `rank` < 1, or `target` selects nothing (the message lists
                the names that can be targeted). Nothing is changed.

        Examples:
            >>> import jax.numpy as jnp, numpy as np
            >>> from jaxlayer import JaxLayer
            >>> layer = JaxLayer(lambda params, inputs: inputs @ params["w"] + params["b"],
            ...                  params={"w": jnp.ones((4, 3)), "b": jnp.zeros(3)})
            >>> layer.enable_lora(2)
            >>> sorted((v.name, v.trainable) for v in layer.weights)
            [('b', True), ('w', False), ('w.lora_a', True), ('w.lora_b', True)]
            >>> layer.lora_rank, np.asarray(layer(np.ones((1, 4), "float32"))).tolist()
            (2, [[4.0, 4.0, 4.0]])
        """
        if not self.built:
            raise ValueError(
                f"`enable_lora` was called on JaxLayer `{self.name}` before it was built: call "
                f"it once on a batch (or put it in a model with `keras.Input`) first."
            )
        if self._lora is not None:
            raise ValueError(
                f"LoRA is already enabled on JaxLayer `{self.name}` (rank {self._lora[0]}). "
                f"Call `merge_lora()` first to enable it again."
            )
        self._enable_lora_leaves(rank, target, lora_alpha, a_initializer, b_initializer, freeze_others)

    def _enable_lora_leaves(self, rank, target, lora_alpha, a_initializer, b_initializer, freeze_others) -> None:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"`enable_lora(rank)` must be an integer >= 1. Received: rank={rank!r}")
        rank = int(rank)
        alpha = float(rank if lora_alpha is None else lora_alpha)
        chosen = self._select(target, self._matrix_candidates(), "float kernel", "enable_lora")
        a_init, b_init = keras.initializers.get(a_initializer), keras.initializers.get(b_initializer)
        created: list = []
        with self._bridge.changing_variables(self):
            try:
                self._tracker.unlock()
                for index in chosen:
                    name = self._param_variables[index].name
                    fan_in, fan_out = self._fans(index)
                    created.append(self._add_extra_weight(f"{name}.lora_a", (fan_in, rank), "float32", a_init, True))
                    created.append(self._add_extra_weight(f"{name}.lora_b", (rank, fan_out), "float32", b_init, True))
            except Exception:
                for variable in created:
                    self._untrack_variable(variable)
                self._drop_unused_forms()
                raise
            finally:
                self._tracker.lock()
        for position, index in enumerate(chosen):
            form = self._form_for(index)
            form.lora_a, form.lora_b = created[2 * position], created[2 * position + 1]
        for index, variable in enumerate(self._param_variables):
            if index in chosen or freeze_others:
                self._form_for(index).was_trainable = variable.trainable
                variable.trainable = False
        self._drop_unused_forms_keep_frozen()
        self._set_untracked("_lora", (rank, alpha, target, bool(freeze_others)))
        self._refresh_program()

    def _drop_unused_forms_keep_frozen(self) -> None:
        # Forms that only remember a trainability (freeze_others) stay until merge.
        for index in [i for i, f in self._forms.items() if not f.extra_variables() and f.was_trainable is None]:
            del self._forms[index]

    def merge_lora(self) -> None:
        """Folds the adapters into the params and removes them.

        Each adapted `W` becomes `W + (alpha / rank) * A @ B` (an int8 kernel
        is quantized again), and every param LoRA froze is trainable again.
        The outputs do not change. Compile the model again afterwards.

        Raises:
            ValueError: LoRA is not enabled.
        """
        if self._lora is None:
            raise ValueError(f"`merge_lora` was called on JaxLayer `{self.name}`, which has no LoRA enabled.")
        rank, alpha = self._lora[0], self._lora[1]
        merged = {}
        for index, form in self._forms.items():
            if form.lora_a is None:
                continue
            variable = self._param_variables[index]
            a, b = (self._bridge.variable_to_jax(v) for v in (form.lora_a, form.lora_b))
            delta = lora_delta(a, b, alpha / rank, variable.shape, form.out_first)
            value = self._bridge.variable_to_jax(variable)
            if form.scale is not None:
                w = dequantize(value, self._bridge.variable_to_jax(form.scale), form.out_first, jnp.float32)
                merged[index] = quantize_int8(w + delta, form.out_first)
            else:
                merged[index] = ((value.astype(jnp.float32) + delta).astype(value.dtype),)
        with self._bridge.changing_variables(self):
            for index, values in merged.items():
                form = self._forms[index]
                self._param_variables[index].assign(self._bridge.from_jax(jnp.asarray(values[0])))
                if form.scale is not None:
                    form.scale.assign(self._bridge.from_jax(jnp.asarray(values[1])))
                for variable in (form.lora_a, form.lora_b):
                    self._untrack_variable(variable)
                form.lora_a = form.lora_b = None
        for index, form in self._forms.items():
            if form.was_trainable is not None:
                self._param_variables[index].trainable = form.was_trainable
                form.was_trainable = None
        self._drop_unused_forms()
        self._set_untracked("_lora", None)
        self._refresh_program()

    # ------------------------------------------------------------------ files

    def _lora_variables(self) -> dict[str, Any]:
        out = {}
        for index in sorted(self._forms):
            form = self._forms[index]
            for variable in (form.lora_a, form.lora_b):
                if variable is not None:
                    out[variable.name] = variable
        return out

    def save_lora_weights(self, path: str | os.PathLike) -> None:
        """Writes only the LoRA adapters (and the rank, alpha and target) to `path`.

        Args:
            path: a file name ending in `.lora.h5`.

        Raises:
            ValueError: LoRA is not enabled, or `path` has another suffix.
        """
        path = _lora_path(path, "save_lora_weights")
        if self._lora is None:
            raise ValueError(
                f"`save_lora_weights` was called on JaxLayer `{self.name}`, which has no LoRA "
                f"enabled: call `enable_lora(rank, ...)` first."
            )
        import h5py  # a Keras dependency

        rank, alpha, target, _ = self._lora
        with h5py.File(path, "w") as file:
            file.attrs["lora_rank"] = rank
            file.attrs["lora_alpha"] = alpha
            file.attrs["lora_target"] = "" if target is None else target
            group = file.create_group("adapters")
            for name, variable in self._lora_variables().items():
                group.create_dataset(name, data=np.asarray(keras.ops.convert_to_numpy(variable.value)))

    def load_lora_weights(self, path: str | os.PathLike) -> None:
        """Loads adapters written by `save_lora_weights` into this layer.

        The layer must have the same base, and LoRA enabled with the same
        rank on the same params (a layer without LoRA gets it enabled with
        the file's rank, alpha and target first).

        Raises:
            ValueError: the rank or the adapted params differ, or a shape
                differs. Nothing is changed.
        """
        path = _lora_path(path, "load_lora_weights")
        import h5py

        with h5py.File(path, "r") as file:
            attrs: Any = file.attrs
            rank, alpha = int(attrs["lora_rank"]), float(attrs["lora_alpha"])
            target = str(attrs["lora_target"]) or None
            adapters: Any = file["adapters"]
            arrays = {name: np.asarray(data) for name, data in adapters.items()}
        if self._lora is None:
            self.enable_lora(rank, target=target, lora_alpha=alpha)
        assert self._lora is not None, "set by enable_lora"
        if rank != self._lora[0]:
            raise ValueError(
                f"`load_lora_weights({path!r})`: the file holds rank-{rank} adapters, JaxLayer "
                f"`{self.name}` has rank {self._lora[0]}. Use a layer with `enable_lora({rank})`."
            )
        variables = self._lora_variables()
        if set(arrays) != set(variables):
            raise ValueError(
                f"`load_lora_weights({path!r})`: the file's adapters do not match JaxLayer "
                f"`{self.name}`'s. Only in the file: {sorted(set(arrays) - set(variables))}; only "
                f"in the layer: {sorted(set(variables) - set(arrays))}. Enable LoRA with the same "
                f"`target` (the file's: {target!r})."
            )
        for name, variable in variables.items():
            if tuple(arrays[name].shape) != tuple(variable.shape):
                raise ValueError(
                    f"`load_lora_weights({path!r})`: `{name}` has shape {arrays[name].shape} in "
                    f"the file, {tuple(variable.shape)} in the layer (a different base model?)."
                )
        for name, variable in variables.items():
            variable.assign(arrays[name])


def _lora_path(path: Any, method: str) -> str:
    path = os.fspath(path)
    if not path.endswith(LORA_SUFFIX):
        raise ValueError(f"`{method}` needs a path ending in `{LORA_SUFFIX}`. Received: {path!r}")
    return path
