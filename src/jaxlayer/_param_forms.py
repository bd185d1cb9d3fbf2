"""How a layer stores its params after `enable_lora` / `quantize`.

`ParamForms` is mixed into `JaxLayer`. It keeps, per transformed param leaf,
its extra variables (an int8 kernel's `.scale`, LoRA's `.lora_a` and
`.lora_b`), builds the `ParamTransform` and the frozen mask the layer's
`Program` runs with, and holds what the config records so a saved layer
comes back with the same variables:

- `lora_rank`, `lora_alpha`, `lora_target`, `lora_freeze_others`;
- `kernel_out_first` when the kernels' output axis is the first (Equinox),
  so a portable load, which has no framework, lays out the adapters alike;
- `quantization_target` (the mode itself is the quantized dtype policy,
  e.g. `"int8_from_float32"`, which Keras saves as the layer's `dtype`).

`_lora.LoraHooks` and `_quantize.QuantizeHooks` change the forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import keras

from ._dtypes import canonical_dtype, is_float
from ._param_transform import LeafForm, ParamTransform, fans

if TYPE_CHECKING:
    from ._program import Program
    from ._variables import TreeLayout

    _MixinBase = keras.layers.Layer
else:
    _MixinBase = object

#: Config keys `ParamForms` reads back (popped before `Layer.__init__`).
FORM_OPTIONS = (
    "lora_rank",
    "lora_alpha",
    "lora_target",
    "lora_freeze_others",
    "quantization_target",
    "kernel_out_first",
)


def pop_form_options(kwargs: dict) -> dict:
    """The form options taken out of a constructor's kwargs (Keras's
    `Layer.__init__` rejects them)."""
    return {key: kwargs.pop(key) for key in FORM_OPTIONS if key in kwargs}


@dataclass
class Form:
    """The stored form of one param leaf (see `_param_transform.LeafForm`)."""

    out_first: bool
    dtype: Any  # the float dtype the leaf had before quantization
    scale: Any = None
    lora_a: Any = None
    lora_b: Any = None
    # Trainability LoRA changed, to restore at `merge_lora`.
    was_trainable: bool | None = None

    def extra_variables(self) -> list:
        return [v for v in (self.scale, self.lora_a, self.lora_b) if v is not None]


class ParamForms(_MixinBase):
    """The stored forms of params (a mixin; see the module docstring)."""

    _bridge: Any
    _param_variables: list
    _forms: dict[int, Form]
    _lora: tuple[int, float, str | None, bool] | None  # rank, alpha, target, freeze_others
    _pending_forms: dict
    _quantization_target: str | None
    _kernel_out_first: bool
    _params_layout: TreeLayout
    _program: Program

    if TYPE_CHECKING:

        def _set_untracked(self, name: str, value: Any) -> None: ...

        def _make_program(self) -> Program: ...

        def _call_aval(self, variable: Any) -> jax.ShapeDtypeStruct: ...

    # ------------------------------------------------------------- settings

    def _init_forms(self, options: dict) -> None:
        """Holds the form options of a saved layer until its variables exist
        (`_apply_pending_forms`)."""
        self._set_untracked("_pending_forms", options)
        self._set_untracked("_forms", {})
        self._set_untracked("_lora", None)  # (rank, alpha, target, freeze_others)
        self._set_untracked("_quantization_target", None)
        self._set_untracked("_kernel_out_first", bool(options.get("kernel_out_first", False)))

    def _reset_forms(self) -> None:
        """New variables (a build): no form applies to them yet."""
        self._set_untracked("_forms", {})

    def _apply_pending_forms(self) -> None:
        """Re-creates a saved layer's int8 kernels and adapters (after its variables)."""
        options = self._pending_forms
        self._set_untracked("_pending_forms", {})
        if self.quantization_mode is not None and not getattr(self, "_is_quantized", False):
            self._quantize_leaves(self.quantization_mode, options.get("quantization_target"))  # type: ignore[attr-defined]
        if options.get("lora_rank") is not None:
            self._enable_lora_leaves(  # type: ignore[attr-defined]
                options["lora_rank"],
                options.get("lora_target"),
                options.get("lora_alpha"),
                "he_uniform",
                "zeros",
                bool(options.get("lora_freeze_others", False)),
            )

    def _forms_config(self) -> dict:
        config: dict[str, Any] = {}
        if self._lora is not None:
            rank, alpha, target, freeze_others = self._lora
            config.update(lora_rank=rank, lora_alpha=alpha, lora_target=target, lora_freeze_others=freeze_others)
        if self._quantization_target is not None:
            config["quantization_target"] = self._quantization_target
        if any(form.out_first for form in self._forms.values()):
            config["kernel_out_first"] = True
        return config

    # ------------------------------------------------------------ variables

    def _program_variables(self) -> list:
        """The variables the program takes: every param, then the extras."""
        return list(self._param_variables) + self._extra_variables()

    def _call_variables(self) -> list:
        """`_program_variables`, once the program follows the params' trainability.

        A param's trainability changed after `enable_lora` or `quantize` (a
        bias made trainable again) makes a new program: its frozen mask
        decides what the tensorflow bridge differentiates.
        """
        if self._forms and self._program.frozen != self._frozen_mask():
            self._set_untracked("_program", self._make_program())
        return self._program_variables()

    def _extra_variables(self) -> list:
        return [v for index in sorted(self._forms) for v in self._forms[index].extra_variables()]

    def _program_forms(self) -> tuple[ParamTransform | None, list[bool] | None]:
        """The transform and frozen mask for `_make_program` (None, None: plain)."""
        if not self._forms:
            return None, None
        return self._transform(for_call=True), self._frozen_mask()

    def _transform(self, for_call: bool) -> ParamTransform:
        """`for_call`: dequantize to what `call_fn` receives (the compute
        dtype under autocast); otherwise to the stored float dtype."""
        position = len(self._param_variables)
        forms = []
        for index in sorted(self._forms):
            form = self._forms[index]
            slots: dict[str, int] = {}
            for key in ("scale", "lora_a", "lora_b"):
                if getattr(form, key) is not None:
                    slots[key] = position
                    position += 1
            variable = self._param_variables[index]
            forms.append(
                LeafForm(
                    index=index,
                    shape=tuple(variable.shape),
                    out_first=form.out_first,
                    dtype=self._float_call_dtype(form.dtype) if for_call else form.dtype,
                    factor=self._lora[1] / self._lora[0] if self._lora is not None else 1.0,
                    **slots,
                )
            )
        return ParamTransform(len(self._param_variables), forms)

    def _frozen_mask(self) -> list[bool]:
        frozen = [not v.trainable for v in self._param_variables]
        return frozen + [not v.trainable for v in self._extra_variables()]

    def _float_call_dtype(self, dtype: Any) -> Any:
        if self.autocast:
            return jax.numpy.dtype(self.compute_dtype)
        return dtype

    def _plain_param_avals(self) -> list[jax.ShapeDtypeStruct]:
        """The params as `call_fn` receives them (int8 kernels as floats)."""
        avals = []
        for index, variable in enumerate(self._param_variables):
            form = self._forms.get(index)
            if form is not None and form.scale is not None:
                avals.append(jax.ShapeDtypeStruct(tuple(variable.shape), self._float_call_dtype(form.dtype)))
            else:
                avals.append(self._call_aval(variable))
        return avals

    def _plain_param_dtypes(self) -> list:
        """The params' dtypes before quantization (what a saved layout records)."""
        return [
            self._forms[i].dtype if i in self._forms and self._forms[i].scale is not None else v.dtype
            for i, v in enumerate(self._param_variables)
        ]

    def _add_extra_weight(self, name: str, shape: tuple, dtype: Any, initializer: Any, trainable: bool) -> Any:
        variable = self.add_weight(
            name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=trainable, autocast=False
        )
        self._bridge.adopt_variable(variable)
        return variable

    def _refresh_program(self) -> None:
        """The params tree and the program, after the forms changed."""
        self._set_untracked("_params_tree", self._params_layout.rebuild(self._param_variables))
        self._set_untracked("_program", self._make_program())

    def _stored_values(self) -> list:
        return [self._bridge.variable_to_jax(v) for v in self._program_variables()]

    def _plain_params_list(self) -> list:
        """The params as `call_fn` receives them, as JAX arrays in the stored dtype."""
        values = self._stored_values()
        if not self._forms:
            return values
        return self._transform(for_call=False)(values)

    def _check_plain_params(self, method: str) -> None:
        if not self._forms:
            return
        what = "LoRA is enabled" if self._lora is not None else "it is quantized (int8)"
        raise ValueError(
            f"`{method}` cannot write the params of JaxLayer `{self.name}`: {what}, so its "
            f"variables no longer hold the params as `call_fn` receives them. Call it before "
            f"`enable_lora` / `quantize`, or after `merge_lora()`; `get_params()` returns the "
            f"merged params."
        )

    # ------------------------------------------------------------ selection

    def _lora_out_first(self, variable: Any) -> bool:
        """Whether a kernel's output axis is its first (Equinox) or last (the rest)."""
        return self._kernel_out_first

    def _select(self, target: str | None, candidates: list[int], what: str, method: str) -> list[int]:
        """The candidate param indices whose names `target` (a regex) searches."""
        names = [self._param_variables[i].name for i in candidates]
        if not candidates:
            raise ValueError(
                f"`{method}` found no {what} in JaxLayer `{self.name}`: it applies to float "
                f"params with at least 2 dimensions. Its params: "
                f"{[v.name for v in self._param_variables]}."
            )
        if target is None:
            return candidates
        if not isinstance(target, str):
            raise TypeError(f"`{method}(target=...)` must be a regex string or None. Received: target={target!r}")
        try:
            pattern = re.compile(target)
        except re.error as error:
            raise ValueError(f"`{method}(target={target!r})` is not a valid regex: {error}.") from None
        chosen = [i for i, name in zip(candidates, names) if pattern.search(name)]
        if not chosen:
            raise ValueError(
                f"`{method}(target={target!r})` selects no {what} of JaxLayer `{self.name}`. "
                f"Names that can be targeted: {names}. Nothing was changed."
            )
        return chosen

    def _matrix_candidates(self) -> list[int]:
        """Params with >= 2 dims that are float, or int8 kernels (quantized floats)."""
        return [
            i
            for i, v in enumerate(self._param_variables)
            if len(v.shape) >= 2 and (is_float(v.dtype) or (i in self._forms and self._forms[i].scale is not None))
        ]

    def _form_for(self, index: int) -> Form:
        form = self._forms.get(index)
        if form is None:
            variable = self._param_variables[index]
            form = Form(out_first=self._lora_out_first(variable), dtype=canonical_dtype(variable.dtype))
            self._forms[index] = form
        return form

    def _fans(self, index: int) -> tuple[int, int]:
        variable = self._param_variables[index]
        return fans(variable.shape, self._form_for(index).out_first)

    def _drop_unused_forms(self) -> None:
        for index in [i for i, f in self._forms.items() if not f.extra_variables()]:
            del self._forms[index]
