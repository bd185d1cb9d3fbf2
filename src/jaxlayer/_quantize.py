"""int8 weights for any JAX model: Keras's `quantize` contract on `JaxLayer`.

`QuantizeHooks` is mixed into `JaxLayer`, so `model.quantize("int8")`
reaches every JaxLayer in a model. Weight-only, symmetric, per output
channel (absmax): each selected float kernel becomes an `int8`
non-trainable variable (same name) and a float32 `<name>.scale` variable;
the layer's program dequantizes it (`_param_transform`) before `call_fn`.
The layer's dtype policy becomes Keras's quantized policy
(`"int8_from_float32"`), which `get_config` saves, so a reloaded layer is
int8 again.
"""

from __future__ import annotations

from typing import Any

import keras

from ._dtypes import is_float
from ._param_forms import ParamForms
from ._param_transform import QUANTIZATION_MODES, quantize_int8


class QuantizeHooks(ParamForms):
    """`quantize(mode)` (a mixin; Keras wraps it with its argument checks)."""

    def quantize(self, mode: str | None = None, type_check: bool = True, config: Any = None, *, target: str | None = None) -> None:
        """Stores the float kernels as int8 with a per-output-channel scale.

        Called by `model.quantize("int8")` for every JaxLayer of a model.
        Weight-only and symmetric: each float param with at least 2
        dimensions (or those whose names the regex `target` searches) becomes
        an `int8` variable of the same name plus a float32 `<name>.scale`
        (one value per output channel: the last axis, or the first for
        `EquinoxLayer`), dequantized inside the compiled program. The layer's
        dtype policy becomes `int8_from_<policy>`; `model.save` keeps it.
        Call before `enable_lora` (QLoRA: the adapters train on the frozen
        int8 base).

        Args:
            mode: `"int8"`; other Keras modes raise `NotImplementedError`,
                which `model.quantize` turns into a warning.
            type_check: accepted for Keras's contract (every JaxLayer
                subclass quantizes the same way).
            config: accepted for Keras's contract; the weight quantizer is
                always absmax per output channel.
            target: a regex over the params' names; None: every candidate.

        Raises:
            NotImplementedError: `mode` is not `"int8"`.
            ValueError: LoRA is enabled, or `target` selects nothing.

        Examples:
            >>> import jax.numpy as jnp, numpy as np
            >>> from jaxlayer import JaxLayer
            >>> layer = JaxLayer(lambda params, inputs: inputs @ params["w"],
            ...                  params={"w": jnp.array([[1.0, -2.0], [0.5, 4.0]])})
            >>> layer.quantize("int8")
            >>> layer.quantization_mode, [(v.name, v.dtype) for v in layer.weights]
            ('int8', [('w', 'int8'), ('w.scale', 'float32')])
            >>> np.asarray(layer(np.eye(2, dtype="float32"))).round(1).tolist()
            [[1.0, -2.0], [0.5, 4.0]]
        """
        if mode not in QUANTIZATION_MODES:
            raise NotImplementedError(
                f"JaxLayer `{self.name}` cannot quantize to mode={mode!r}: the modes it "
                f"implements are {', '.join(repr(m) for m in QUANTIZATION_MODES)}."
            )
        if self._lora is not None:
            raise ValueError(
                f"`quantize` was called on JaxLayer `{self.name}` with LoRA enabled. Quantize "
                f"first, then `enable_lora` (QLoRA), or `merge_lora()` before quantizing."
            )
        self._quantize_leaves(mode, target)
        policy_name = self.dtype_policy.name
        if self.dtype_policy.quantization_mode is None:
            self.dtype_policy = keras.dtype_policies.get(f"{mode}_from_{policy_name}")

    def _quantize_leaves(self, mode: str, target: str | None) -> None:
        candidates = [
            i
            for i, v in enumerate(self._param_variables)
            if len(v.shape) >= 2 and i not in self._forms and is_float(v.dtype)
        ]
        chosen = self._select(target, candidates, "float kernel", "quantize")
        values = {}
        for index in chosen:
            form = self._form_for(index)
            values[index] = quantize_int8(self._bridge.variable_to_jax(self._param_variables[index]), form.out_first)
        with self._bridge.changing_variables(self):
            self._tracker.unlock()
            try:
                for index, (q, scale) in values.items():
                    old = self._param_variables[index]
                    self._untrack_variable(old)
                    kernel = self._add_extra_weight(old.name, q.shape, "int8", q, False)
                    form = self._forms[index]
                    form.scale = self._add_extra_weight(f"{old.name}.scale", scale.shape, "float32", scale, False)
                    self._param_variables[index] = kernel
            finally:
                self._tracker.lock()
        self._is_quantized = True
        self._set_untracked("_quantization_target", target)
        self._refresh_program()

    def _int8_call(self, *args: Any, **kwargs: Any) -> Any:
        # Keras's `Layer.__call__` calls this for an int8 policy; the program
        # itself dequantizes.
        return self.call(*args, **kwargs)

