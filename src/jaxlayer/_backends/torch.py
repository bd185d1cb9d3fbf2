"""The PyTorch backend bridge: DLPack in and out, `jax.vjp` as the backward.

A call that torch must differentiate goes through `_JaxFunction`, a
`torch.autograd.Function`. Its forward hands the tensors to JAX with DLPack
and runs one compiled function that returns the outputs, the new state and
the `jax.vjp` pullback (a PyTree of residual arrays); its backward runs the
compiled pullback on the incoming gradients. Calls without gradients (under
`torch.no_grad()`, as in `predict`) run the plain compiled program.

Buffer safety: tensors cross into JAX without a copy when their layout
allows, so JAX reads memory that torch owns and may later change in place.
Every call therefore waits for the computation to finish before returning,
and any result buffer that is still one of the input buffers is copied, so
the outputs and the new state never share memory with a tensor torch can
mutate. The backward reads the params and inputs it needs from their torch
tensors again (the forward keeps no copy of them; `ResidualLayout`), saved
with `save_for_backward`, so torch's version counters refuse a backward
after one was changed in place, as for torch's own layers. Values handed
out of the layer (`to_jax`, `from_jax`) are always copies.
"""

# `torch.compiler.disable` is annotated to return a union of callables, which
# the type checker cannot match with the methods it decorates.
# pyright: reportIncompatibleMethodOverride=false

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.utils.dlpack

from .._dtypes import is_float
from .._keras_internals import keras_export_format, torch_default_device
from .._rng import seed_words
from .base import Bridge
from .torch_programs import compiled_forward as _compiled_forward
from .torch_programs import signature as _signature
from .torch_programs import vjp_backward as _vjp_backward


def _tensor_to_jax(tensor: torch.Tensor) -> jax.Array:
    """Shares the tensor's memory with JAX where its layout allows, else copies."""
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    if tensor.device.type == "cpu" and _CPU_IMPORT is not None:
        array = _CPU_IMPORT(tensor)
        if array is not None:
            return array
    return jax.dlpack.from_dlpack(tensor)


def _cpu_dlpack_import():
    """A faster zero-copy import of CPU tensors, or None where it is unavailable.

    `jax.dlpack.from_dlpack` spends most of its ~0.1 ms in Python around one
    jaxlib call, several times per training step. That call is private, so it
    is used only after a probe shows it returns a zero-copy array of the right
    shape and dtype; any failure falls back to the public function. Dtypes
    JAX would canonicalise (64-bit without x64) always take the public path.
    """
    try:
        from jax._src.lib import _jax

        convert = _jax.dlpack_managed_tensor_to_buffer
        device = jax.devices("cpu")[0]
        cpu = 1  # DLPack's kDLCPU

        def import_cpu(tensor: torch.Tensor):
            dtype = _TORCH_TO_NUMPY.get(tensor.dtype)
            if dtype is None or jax.dtypes.canonicalize_dtype(dtype) != dtype:
                return None
            try:
                return convert(tensor.__dlpack__(stream=None), device, None, None, cpu)
            except Exception:  # noqa: BLE001 - the public path decides
                return None

        probe = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        array = import_cpu(probe)
        ok = (
            isinstance(array, jax.Array)
            and array.shape == (2, 3)
            and array.dtype == jnp.float32
            and array.unsafe_buffer_pointer() == probe.data_ptr()
            and np.array_equal(np.asarray(array), probe.numpy())
        )
        return import_cpu if ok else None
    except Exception:  # noqa: BLE001 - any other jaxlib: use the public path
        return None


_TORCH_TO_NUMPY = {
    torch.float32: np.dtype("float32"),
    torch.float64: np.dtype("float64"),
    torch.float16: np.dtype("float16"),
    torch.bfloat16: jnp.dtype("bfloat16"),
    torch.int8: np.dtype("int8"),
    torch.int16: np.dtype("int16"),
    torch.int32: np.dtype("int32"),
    torch.int64: np.dtype("int64"),
    torch.uint8: np.dtype("uint8"),
    torch.bool: np.dtype("bool"),
}
_CPU_IMPORT = _cpu_dlpack_import()


def _cpu_dlpack_export():
    """A faster zero-copy export of CPU JAX arrays, or None where unavailable.

    Like `_cpu_dlpack_import`: skips the Python around one private jaxlib
    call (`jax.Array.__dlpack__`), after a probe; falls back on any failure.
    """
    try:
        from jax._src.lib import _jax

        convert = _jax.buffer_to_dlpack_managed_tensor
        only_cpu = {jax.devices("cpu")[0]}

        def export_cpu(array: Any):
            try:
                if array.sharding.device_set != only_cpu:
                    return None
                return torch.utils.dlpack.from_dlpack(convert(array, stream=None))
            except Exception:  # noqa: BLE001 - the public path decides
                return None

        probe = jax.device_put(np.arange(6, dtype=np.float32).reshape(2, 3), next(iter(only_cpu)))
        tensor = export_cpu(probe)
        ok = (
            isinstance(tensor, torch.Tensor)
            and tuple(tensor.shape) == (2, 3)
            and tensor.dtype == torch.float32
            and tensor.data_ptr() == probe.unsafe_buffer_pointer()
            and np.array_equal(tensor.numpy(), np.asarray(probe))
        )
        return export_cpu if ok else None
    except Exception:  # noqa: BLE001 - any other jaxlib: use the public path
        return None


_CPU_EXPORT = _cpu_dlpack_export()


def _leaf_to_jax(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return _tensor_to_jax(value)
    return jnp.asarray(value)


def _jax_to_tensor(array: Any) -> Any:
    """A JAX result as a torch tensor over the same buffer (no copy)."""
    if array is None:
        return None
    if _CPU_EXPORT is not None:
        tensor = _CPU_EXPORT(array)
        if tensor is not None:
            return tensor
    return torch.from_dlpack(array)


def _buffer_pointers(arrays: list) -> set:
    pointers = set()
    for array in arrays:
        try:
            pointers.add(array.unsafe_buffer_pointer())
        except Exception:  # noqa: BLE001 - sharded or deleted arrays: no single buffer
            pass
    return pointers


def _unalias(tree: Any, input_pointers: set) -> Any:
    """Copies the leaves of `tree` that still use one of the input buffers.

    Top-level `jax.jit` returns fresh buffers today, so this is normally a
    no-op; it keeps the bridge safe if JAX ever forwards inputs to outputs.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not input_pointers or not _buffer_pointers(leaves) & input_pointers:
        return tree
    fresh = [
        jnp.copy(leaf) if _buffer_pointers([leaf]) & input_pointers else leaf for leaf in leaves
    ]
    return jax.tree.unflatten(treedef, fresh)


def _seed_to_key(seed: Any) -> Any:
    if seed is None:
        return None
    if isinstance(seed, torch.Tensor):
        seed = seed.detach().cpu().numpy()
    # Keras stores torch seeds as int32 (torch has no uint32).
    return jnp.asarray(seed_words(seed))


_SIGNED_TORCH = {2: torch.int16, 4: torch.int32, 8: torch.int64}


class _UnsignedState:
    """Round-trips the unsigned state leaves that Keras-torch keeps in a wider dtype.

    torch has no usable uint16/uint32, so Keras stores such variables as
    int32/int64 holding the same (non-negative) value. JAX must see the dtype
    the state was created with (the program checks it): each such leaf goes
    in as the signed type of its width (the bits, by a wrapping cast) bit-cast
    to the unsigned type, and its new value comes back the other way, widened
    to the storage dtype with the sign bits masked off.
    """

    def __init__(self, program: Any, state: Sequence[Any]):
        self.slots: dict[int, tuple[np.dtype, torch.dtype]] = {}
        for index, (tensor, dtype) in enumerate(zip(state, program.state_dtypes)):
            if _is_unsigned_in_signed_storage(dtype, tensor):
                self.slots[index] = (np.dtype(dtype), tensor.dtype)

    def encode(self, state: Sequence[Any]) -> list:
        """The state tensors, unsigned ones as same-width signed tensors (torch side)."""
        state = list(state)
        for index, (dtype, _) in self.slots.items():
            state[index] = state[index].detach().to(_SIGNED_TORCH[dtype.itemsize])
        return state

    def decode(self, arrays: list) -> list:
        """The imported state arrays, with the unsigned ones bit-cast back (JAX side)."""
        arrays = list(arrays)
        for index, (dtype, _) in self.slots.items():
            arrays[index] = jax.lax.bitcast_convert_type(arrays[index], dtype)
        return arrays

    def to_storage(self, new_state: list) -> list:
        """New state arrays as torch tensors of the variables' storage dtypes."""
        tensors = []
        for index, array in enumerate(new_state):
            slot = self.slots.get(index)
            if slot is None or array.dtype != slot[0]:
                tensors.append(_jax_to_tensor(array))
                continue
            dtype, storage = slot
            signed = jax.lax.bitcast_convert_type(array, np.dtype(f"int{8 * dtype.itemsize}"))
            widened = _jax_to_tensor(signed).to(storage)
            if storage.itemsize > dtype.itemsize:
                widened = widened.bitwise_and_((1 << (8 * dtype.itemsize)) - 1)
            tensors.append(widened)
        return tensors


def _is_unsigned_in_signed_storage(dtype: Any, tensor: Any) -> bool:
    """Whether `tensor` is Keras-torch's signed storage of an unsigned `dtype`."""
    dtype = np.dtype(dtype)
    return (
        dtype.kind == "u"
        and dtype.itemsize in _SIGNED_TORCH
        and isinstance(tensor, torch.Tensor)
        and tensor.dtype in _SIGNED_TORCH.values()
        and tensor.dtype.itemsize >= dtype.itemsize
    )


class _Call:
    """What one differentiable call needs besides the tensors, and what it leaves."""

    def __init__(self, program, training, rng, mask, layout, unsigned):
        self.program = program
        self.unsigned = unsigned
        self.training = training
        self.rng = rng
        self.mask = mask
        self.layout = layout
        # Filled by the forward pass:
        self.outputs: tuple[Any, list, list[bool]] | None = None
        self.new_state: Any = None


class _JaxFunction(torch.autograd.Function):
    """`program` as a torch op whose backward is its compiled `jax.vjp`.

    Arguments: a `_Call`, then every tensor leaf (params, state, inputs).
    Returns the floating-point output leaves, which are the only outputs
    torch differentiates; integer outputs and the new state are left on the
    `_Call`.
    """

    # Neither pass can be traced by TorchDynamo (it would trace into JAX):
    # `torch.compile` runs them eagerly, also when it compiles a training
    # step whose `loss.backward()` reaches this function.
    @staticmethod
    @torch.compiler.disable
    def forward(ctx, call: _Call, *tensors):
        flat = [_leaf_to_jax(t) for t in tensors]
        if call.unsigned.slots:
            num_params, num_state, _ = call.layout
            state_end = num_params + num_state
            flat[num_params:state_end] = call.unsigned.decode(flat[num_params:state_end])
        # What is differentiated: where torch asks, and float (`_dtypes`).
        mask = tuple(m and is_float(leaf.dtype) for m, leaf in zip(call.mask, flat))
        compiled = _compiled_forward(call.program, call.training)
        result = compiled.fn(flat, call.rng, mask=mask, layout=call.layout)
        jax.block_until_ready(result)  # the inputs have been read once this returns
        outputs, new_state, returned = _unalias(result, _buffer_pointers(flat))
        residual_layout = compiled.layouts[_signature(flat, call.rng, mask, call.layout)]
        output_leaves, treedef = jax.tree.flatten(outputs)
        tensors_out = [_jax_to_tensor(leaf) for leaf in output_leaves]
        float_flags = [is_float(leaf.dtype) for leaf in output_leaves]
        float_tensors = [t for t, f in zip(tensors_out, float_flags) if f]
        call.outputs = (treedef, tensors_out, float_flags)
        call.new_state = call.unsigned.to_storage(new_state)
        # Kept (not freed) so that retain_graph works.
        ctx.residuals = (residual_layout, returned)
        ctx.mask = mask
        ctx.num_outputs = len(float_tensors)
        # Outputs are zero-copy views of JAX buffers: torch's version counter
        # flags an in-place change made before backward, to them and to the
        # params and inputs the backward reads again (as for torch's own ops).
        reused = [tensors[i] for i in residual_layout.reused()]
        ctx.save_for_backward(*float_tensors, *reused)
        return tuple(float_tensors)

    @staticmethod
    @torch.compiler.disable
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors  # raises if one was modified in place
        residual_layout, returned = ctx.residuals
        reused = dict(
            zip(residual_layout.reused(), (_tensor_to_jax(t) for t in saved[ctx.num_outputs :]))
        )
        cotangents = [_tensor_to_jax(g) for g in grad_outputs]  # the float outputs'
        grads = _vjp_backward(returned, reused, cotangents, residual_layout=residual_layout)
        grads = jax.block_until_ready(grads)
        grads = iter(_jax_to_tensor(g) for g in grads)
        return (None,) + tuple(next(grads) if needs else None for needs in ctx.mask)


def _needs_grad(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.requires_grad and tensor.is_floating_point()


def _variables_device(params, state) -> torch.device:
    for value in (*params, *state):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device(torch_default_device())


def _check_not_traced_by_torch() -> None:
    """Raises a clear error when torch traces the layer to export it.

    `torch.onnx.export` (TorchScript or dynamo), `torch.export` (Keras's
    `format="torch"`, and `format="litert"` through litert-torch) and
    `torch.jit.trace` record torch operations only: they cannot see into the
    JAX program, and fail deep inside the tracer with errors that do not say
    why (a tensor that requires grad "as a constant", or an output with "no
    observable data dependence" on the inputs). Checked on every call: two
    flag reads.
    """
    if not (torch.jit.is_tracing() or torch.compiler.is_exporting()):
        return
    if torch.onnx.is_in_onnx_export():
        raise ValueError(
            "JaxLayer cannot be exported to ONNX on the torch backend: torch.onnx "
            "records torch operations and cannot trace into the JAX program the "
            "layer runs. Export ONNX on the jax backend instead (KERAS_BACKEND=jax, "
            'then `model.export(path, format="onnx")`, which converts the JAX '
            "program with jax2onnx); a `.keras` file saved on any backend loads "
            "there. Received: format=onnx"
        )
    found = keras_export_format()
    received = f"format={found}" if found else "a call traced by torch.export or torch.jit.trace"
    raise ValueError(
        "JaxLayer cannot be traced by torch.export or torch.jit.trace (which Keras's "
        '`format="torch"` and, on the torch backend, `format="litert"` exports '
        "use): they record torch operations and cannot trace into the JAX program "
        'the layer runs. Export on the jax backend (`format="onnx"`) or on the '
        'tensorflow backend (`format="tf_saved_model"` or `format="litert"`) '
        "instead; a `.keras` file saved on any backend loads there. "
        f"Received: {received}"
    )


class TorchBridge(Bridge):
    name = "torch"

    def to_jax(self, value: Any) -> jax.Array:
        if isinstance(value, torch.Tensor):
            # A copy: JAX arrays must not change when the variable is assigned.
            return _tensor_to_jax(value.detach().clone(memory_format=torch.contiguous_format))
        return jnp.array(np.asarray(value))

    def variable_to_jax(self, variable: Any) -> jax.Array:
        # Unsigned variables (stored by Keras-torch in a wider signed dtype)
        # come back with their own dtype and value.
        dtype = jax.dtypes.canonicalize_dtype(np.dtype(variable.dtype))
        value = variable.value
        if not _is_unsigned_in_signed_storage(dtype, value):
            return self.to_jax(value)
        signed = value.detach().to(_SIGNED_TORCH[dtype.itemsize], copy=True)
        return jax.lax.bitcast_convert_type(_tensor_to_jax(signed), dtype)

    def from_jax(self, array: Any) -> Any:
        # A copy: the variable is updated in place, the JAX array must not be.
        return torch.from_dlpack(array).clone()

    def seed_to_key(self, seed: Any) -> jax.Array:
        return _seed_to_key(seed)

    def adopt_variable(self, variable: Any) -> None:
        # Keras's torch layers register variables in a `torch.nn.ParameterDict`
        # keyed by `variable.path`, and torch refuses keys with dots, which
        # PyTree names (`dense.kernel`) have. Keras names cannot contain `/`,
        # so mapping the dots to `/` keeps paths unique; the name is unchanged.
        variable._path = variable.path.replace(".", "/")

    @contextlib.contextmanager
    def changing_variables(self, layer: Any) -> Iterator[None]:
        # Keras registers a variable added after the build in the layer's
        # `torch.nn.ParameterDict` under its path, which has dots here (see
        # `adopt_variable`); the dict is set aside, then rebuilt from the
        # layer's variables once their paths are adopted.
        held = layer._modules.pop("_torch_params", None)
        try:
            yield
        finally:
            if held is not None:
                layer._track_variables()

    @torch.compiler.disable
    def run(self, program, params, state, rng, inputs, training):
        _check_not_traced_by_torch()
        keys = jax.tree.map(_seed_to_key, rng)
        input_leaves, inputs_treedef = jax.tree.flatten(inputs)
        device = _variables_device(params, state)
        # JAX runs one computation on one device: inputs go where Keras keeps
        # the variables (a differentiable move, so gradients flow back).
        input_leaves = [
            leaf.to(device) if isinstance(leaf, torch.Tensor) and leaf.device != device else leaf
            for leaf in input_leaves
        ]
        inputs = jax.tree.unflatten(inputs_treedef, input_leaves)
        unsigned = _UnsignedState(program, state)
        state = unsigned.encode(state)
        tensors = list(params) + list(state) + input_leaves
        num_params, num_state = len(params), len(state)
        # State is never differentiated; params and inputs are where torch asks.
        mask = tuple(
            _needs_grad(t) and not (num_params <= i < num_params + num_state)
            for i, t in enumerate(tensors)
        )
        if not (torch.is_grad_enabled() and any(mask)):
            return self._run_without_grad(program, params, state, keys, inputs, training, unsigned)
        layout = (num_params, num_state, inputs_treedef)
        call = _Call(program, training, keys, mask, layout, unsigned)
        float_tensors = iter(_JaxFunction.apply(call, *tensors))
        assert call.outputs is not None, "set by _JaxFunction.forward"
        treedef, tensors_out, float_flags = call.outputs
        leaves = [next(float_tensors) if f else t for t, f in zip(tensors_out, float_flags)]
        return jax.tree.unflatten(treedef, leaves), call.new_state

    def _run_without_grad(self, program, params, state, keys, inputs, training, unsigned):
        flat_params = [_leaf_to_jax(p) for p in params]
        flat_state = unsigned.decode([_leaf_to_jax(s) for s in state])
        jax_inputs = jax.tree.map(_leaf_to_jax, inputs)
        result = program.jitted(training)(flat_params, flat_state, keys, jax_inputs)
        jax.block_until_ready(result)
        pointers = _buffer_pointers(flat_params + flat_state + jax.tree.leaves(jax_inputs))
        outputs, new_state = _unalias(result, pointers)
        return jax.tree.map(_jax_to_tensor, outputs), unsigned.to_storage(new_state)
