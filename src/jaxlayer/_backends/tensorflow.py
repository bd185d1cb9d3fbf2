"""The TensorFlow backend bridge: the program runs as a `jax2tf` conversion.

`jax2tf.convert` embeds the compiled JAX program in the TensorFlow graph (an
`XlaCallModule` op) with a custom gradient from `jax.vjp`, so
`tf.GradientTape` (and Keras's `fit`) sees gradients for every parameter and
for the inputs. In training calls the forward op also returns the `jax.vjp`
residuals and the backward op reuses them (`_SavedResidualsCall`); inference
calls keep jax2tf's own gradient, which runs the forward again. One conversion is made per training flag and
per input signature (structure, dtypes, non-batch dimensions); the leading
(batch) dimension is symbolic, so every batch size, and graph-mode tensors
with unknown dimensions, reuse the same conversion. The Keras TF seed
(int64[2]: seed and counter) becomes a raw uint32[2] JAX key in the graph,
keeping both words so each training call gets a different key.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import is_float
from .._float_vjp import float_vjp, merge
from .._keras_internals import keras_export_format
from .._rng import seed_words
from .base import Bridge


def _tf():
    import tensorflow as tf

    return tf


def _seed_tensor_to_key(seed: Any) -> Any:
    """A Keras TF seed tensor (shape [2], int64) as a uint32[2] tensor, in the graph.

    Each word is reduced modulo 2**32, as the JAX backend's uint32 seeds are,
    so the counter word (which the seed generator increments) stays in the key.
    """
    tf = _tf()
    seed = tf.convert_to_tensor(seed)
    if seed.dtype == tf.uint32:
        return seed
    if seed.dtype == tf.int32:
        return tf.bitcast(seed, tf.uint32)
    if seed.dtype in (tf.int64, tf.uint64):
        low_bits = tf.bitwise.bitwise_and(
            tf.cast(seed, tf.int64), tf.constant(0xFFFFFFFF, tf.int64)
        )
        return tf.cast(low_bits, tf.uint32)
    raise TypeError(
        f"JaxLayer expected the `rng` seeds to be integer tensors of shape [2] (as "
        f"`keras.random.SeedGenerator.next()` returns them); got dtype {seed.dtype.name}. "
        f"If you override `_get_call_rng`, build its seeds with `self._get_call_seed()`. "
        f"Received: seed={seed!r}"
    )


def _numpy_value(value: Any) -> np.ndarray:
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _onnx_export_message() -> str:
    return (
        "JaxLayer cannot be exported to ONNX on the tensorflow backend: Keras "
        "converts the TensorFlow graph with tf2onnx, which cannot convert the "
        "`XlaCallModule` op that holds the layer's JAX program. Export ONNX on the "
        "jax backend instead (KERAS_BACKEND=jax, then `model.export(path, "
        'format="onnx")`, which converts the JAX program with jax2onnx); a '
        "`.keras` file saved on any backend loads there. On the tensorflow backend, "
        '`format="tf_saved_model"` and `format="litert"` work. '
        "Received: format=onnx"
    )


class _InputSignature:
    """What a conversion depends on: the inputs' structure, dtypes and non-batch dims."""

    def __init__(self, inputs: Any):
        leaves, self.treedef = jax.tree.flatten(inputs)
        shapes: list[tuple] = []
        for leaf in leaves:
            if leaf.shape.rank is None:
                raise ValueError(
                    f"JaxLayer cannot run on a TensorFlow tensor of unknown rank "
                    f"(jax2tf needs the number of dimensions). Give the input a "
                    f"known rank, e.g. with `keras.Input(shape=...)` or a "
                    f"`tf.function(input_signature=...)`. Received: {leaf!r}"
                )
            shapes.append(tuple(leaf.shape.as_list()))
        self.dtypes = tuple(leaf.dtype.name for leaf in leaves)
        self.static_shapes = tuple(shapes)
        self.fully_known = all(d is not None for shape in shapes for d in shape)
        # The leading dimension of every input whose first dimension is unknown
        # or equal to the first input's is the shared symbolic "batch"; any
        # other dimension is kept when known, and symbolic when unknown.
        first = next((s[0] for s in shapes if s), None)
        self.batched = tuple(bool(s) and (s[0] is None or s[0] == first) for s in shapes)
        self.dims = tuple(s[1:] if b else s for s, b in zip(shapes, self.batched, strict=True))

    def key(self) -> tuple:
        return (self.treedef, self.dtypes, self.batched, self.dims)

    def tensor_specs(self, static: bool = False) -> Any:
        """TensorSpecs leaving the batch dimension open (or, static, the whole shape)."""
        tf = _tf()
        if static:
            shapes = self.static_shapes
        else:
            shapes = [
                ((None,) if batched else ()) + dims
                for batched, dims in zip(self.batched, self.dims, strict=True)
            ]
        specs = [
            tf.TensorSpec(shape, dtype) for shape, dtype in zip(shapes, self.dtypes, strict=True)
        ]
        return jax.tree.unflatten(self.treedef, specs)

    def polymorphic_shapes(self) -> Any:
        names = (f"d{i}" for i in itertools.count())
        specs = []
        for batched, dims in zip(self.batched, self.dims, strict=True):
            parts = ["batch"] if batched else []
            parts += [next(names) if d is None else str(d) for d in dims]
            specs.append("(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")"))
        return jax.tree.unflatten(self.treedef, specs)


class TensorflowBridge(Bridge):
    name = "tensorflow"

    def __init__(self) -> None:
        # program -> {(training, signature...): converted function}; a program
        # is replaced whenever the layer recreates its variables.
        self._conversions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # ----------------------------------------------------- eager conversions

    def to_jax(self, value: Any) -> jax.Array:
        return jax.numpy.asarray(_numpy_value(value))

    def from_jax(self, array: Any) -> Any:
        return np.asarray(array)

    def seed_to_key(self, seed: Any) -> jax.Array:
        return jax.numpy.asarray(seed_words(_numpy_value(seed)))

    # ------------------------------------------------------------------ build

    def build_context(self, inputs: Any, layer_name: str):
        tf = _tf()
        if not tf.inside_function():
            return contextlib.nullcontext()
        if _in_keras_symbolic_scope():
            # Keras is inferring shapes in a scratch graph: `init_fn` only
            # needs shapes, and the variables are created eagerly.
            return tf.init_scope()
        raise ValueError(
            f"JaxLayer `{layer_name}` cannot be built inside a `tf.function`: its "
            f"variables would be created while TensorFlow traces a graph. Build it "
            f"first, eagerly: call the layer (or its model) once on a concrete "
            f"batch, call `layer.build(input_shape)`, or create the model with "
            f"`keras.Input`, before calling it from a `tf.function`. Received "
            f"inputs: {inputs!r}"
        )

    # -------------------------------------------------------------------- run

    def run(self, program, params, state, rng, inputs, training):
        tf = _tf()
        if tf.inside_function() and keras_export_format() == "onnx":
            raise ValueError(_onnx_export_message())
        inputs = jax.tree.map(tf.convert_to_tensor, inputs)
        params = [tf.convert_to_tensor(p) for p in params]
        state = [tf.convert_to_tensor(s) for s in state]
        rng = jax.tree.map(_seed_tensor_to_key, rng)
        signature = _InputSignature(inputs)
        args = (params, state, rng, inputs)
        leaves, treedef = jax.tree.flatten(args)
        key = (
            bool(training),
            signature.key(),
            treedef,
            tuple((p.dtype.name, tuple(p.shape)) for p in params),
            tuple((s.dtype.name, tuple(s.shape)) for s in state),
        )
        cache = self._conversions.setdefault(program, {})
        fn = cache.get(key)
        if fn is None:
            fn = _convert(
                program,
                bool(training),
                signature.polymorphic_shapes(),
                treedef,
                _flat_specs(params, state, rng, signature.tensor_specs()),
            )
            try:
                result = fn(*leaves)
            except tf.errors.OpError:
                raise  # the graph ran and failed: not a tracing problem
            except Exception as error:  # noqa: BLE001 - retried with fixed shapes below
                # The model cannot be traced with a symbolic batch dimension
                # (e.g. Python code branching on it, or `lax.pmean` over a
                # vmapped axis): convert it per concrete input shape instead.
                cache[key] = _PER_SHAPE
                if not signature.fully_known:
                    if not _is_shape_polymorphism_error(error):
                        raise  # a bug in `call_fn` itself, whatever the shapes
                    raise ValueError(_unknown_shape_message(signature, error)) from error
            else:
                cache[key] = fn
                return result[0], list(result[1])
        if cache[key] is _PER_SHAPE:
            if not signature.fully_known:
                raise ValueError(_unknown_shape_message(signature, None))
            shaped_key = key + (signature.static_shapes,)
            fn = cache.get(shaped_key)
            if fn is None:
                fn = _convert(
                    program,
                    bool(training),
                    None,
                    treedef,
                    _flat_specs(params, state, rng, signature.tensor_specs(static=True)),
                )
                cache[shaped_key] = fn
        outputs, new_state = fn(*leaves)
        return outputs, list(new_state)


_PER_SHAPE = object()


def _is_shape_polymorphism_error(error: BaseException) -> bool:
    """Whether `error` comes from tracing with a symbolic dimension.

    JAX raises `InconclusiveDimensionOperation` (a private class, matched by
    name) when code needs the concrete value of a symbolic dimension; other
    shape-polymorphism failures name the symbolic dimension (or its type,
    `_DimExpr`, for a `float(x.shape[0])`) in the message.
    """
    names = {cls.__name__ for cls in type(error).__mro__}
    if "InconclusiveDimensionOperation" in names:
        return True
    message = str(error).lower()
    markers = ("symbolic dimension", "shape polymorphism", "_dimexpr")  # e.g. float(dim)
    return any(marker in message for marker in markers)


def _unknown_shape_message(signature: _InputSignature, error: BaseException | None) -> str:
    cause = f" ({type(error).__name__}: {str(error).splitlines()[0]})" if error else ""
    return (
        f"JaxLayer: `call_fn` cannot be converted by jax2tf with a symbolic batch "
        f"dimension{cause}, and inside this `tf.function` the inputs have unknown "
        f"dimensions {signature.static_shapes}, so it cannot be converted for the "
        f"concrete batch size either. This happens in `fit`/`evaluate`/`predict` when "
        f"the last batch is smaller than the others (TensorFlow then traces with an "
        f"unknown batch size; `jit_compile` does not change this). Fixes: give every "
        f"batch the same size (`dataset.batch(batch_size, drop_remainder=True)`, or "
        f"a number of samples that is a multiple of `batch_size` when passing "
        f"arrays), or a `tf.function` with a fully known `input_signature`; or "
        f"compile the model with `run_eagerly=True` (one conversion per batch size, "
        f"slower); or make `call_fn` work with a symbolic batch size (do not use "
        f"`x.shape[0]` as a Python number; see "
        f"https://docs.jax.dev/en/latest/export/shape_poly.html)."
    )


def _flat_specs(params: list, state: list, rng: Any, input_specs: Any) -> list:
    tf = _tf()
    return jax.tree.leaves(
        (
            [tf.TensorSpec(p.shape, p.dtype) for p in params],
            [tf.TensorSpec(s.shape, s.dtype) for s in state],
            jax.tree.map(lambda _: tf.TensorSpec((2,), tf.uint32), rng),
            input_specs,
        )
    )


def _in_keras_symbolic_scope() -> bool:
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:  # pragma: no cover - other Keras layouts
        return False
    return in_symbolic_scope()


def _check_gradient_traces(program: Any, params: Any, state: Any, rng: Any, inputs: Any) -> None:
    """Traces the program's VJP (shapes only) with the symbolic batch dimension.

    jax2tf converts the gradient lazily, when `tf.GradientTape.gradient` is
    traced, outside `run`; a backward pass that needs a concrete batch size
    would fail there, too late to fall back to per-shape conversions. Tracing
    it here, abstractly (nothing is added to the exported forward program),
    raises that error inside `run`. Other errors are left for the real
    gradient to report, if one is ever asked for.
    """

    def backward(params, state, rng, inputs):
        def forward(params, inputs):
            outputs, _ = program(params, state, rng, inputs, True)
            return [o for o in jax.tree.leaves(outputs) if is_float(o.dtype)]

        outputs, vjp = jax.vjp(forward, params, inputs)
        return vjp([jnp.ones_like(o) for o in outputs])

    try:
        jax.eval_shape(backward, params, state, rng, inputs)
    except Exception as error:  # noqa: BLE001 - only shape errors matter here
        if _is_shape_polymorphism_error(error):
            raise


def _convert(
    program: Any, training: bool, input_shapes: Any, treedef: Any, specs: list
) -> Callable:
    """The program converted by jax2tf, in a `tf.function` over the flat arguments.

    The `tf.function`'s signature leaves the batch (and unknown) dimensions
    open, so TensorFlow traces it, and jax2tf exports the JAX program, once.
    """
    tf = _tf()
    from jax.experimental import jax2tf

    # A weak reference: the bridge caches this function in a WeakKeyDictionary
    # keyed by the program, which a strong reference here would keep alive.
    program_ref = weakref.ref(program)

    def pure(params, state, rng, inputs):
        program = program_ref()
        assert program is not None, "the program outlives the functions it caches"
        if training and input_shapes is not None:
            _check_gradient_traces(program, params, state, rng, inputs)
        return program(params, state, rng, inputs, training)

    options: dict[str, Any] = {}
    platforms = getattr(program, "native_serialization_platforms", None)
    if platforms is not None:
        options["native_serialization_platforms"] = tuple(platforms)
    if training:
        flat_call = _SavedResidualsCall(pure, treedef, input_shapes, options, program.frozen)
    else:
        # Inference calls are rarely differentiated: jax2tf's own gradient
        # (which recomputes the forward pass inside the backward op) costs
        # nothing until a gradient is asked for.
        converted = jax2tf.convert(
            pure,
            polymorphic_shapes=[None, None, None, input_shapes],
            with_gradient=True,
            **options,
        )

        def flat_call(*leaves):
            return converted(*jax.tree.unflatten(treedef, leaves))

    # Autograph must not rewrite jax2tf's Python.
    return tf.function(flat_call, input_signature=specs, autograph=False)


def _is_key(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


class _SavedResidualsCall:
    """A training call whose backward pass reuses the forward pass's residuals.

    `jax2tf.convert(..., with_gradient=True)` differentiates by converting
    `jax.vjp` of the whole function, so the backward op runs the forward pass
    again (a ResNet-18 step costs ~1/3 more than on the jax backend). Here two
    programs are converted instead, as the torch bridge and portable models
    do: `forward_vjp` returns the outputs, the new state and the residuals of
    `jax.vjp`; `backward` maps the residuals and the float outputs' cotangents
    to the float params' and inputs' gradients. `tf.custom_gradient` joins
    them. State, rng and integer leaves get no gradient (None), as Keras's
    non-trainable variables expect. Typed PRNG keys among the residuals travel
    as their key data. Called with the flat (params, state, rng, inputs) leaves.
    """

    def __init__(
        self, pure: Callable, treedef: Any, input_shapes: Any, options: dict, frozen: Any = None
    ) -> None:
        from jax.experimental import jax2tf

        # Params never differentiated (frozen by LoRA): no gradient is computed for them.
        self._frozen = frozen

        self._treedef = treedef
        self._options = options
        self._polymorphic = input_shapes is not None
        # Filled when `forward_vjp` is traced (at the first call's tf.function
        # trace), read when the gradient is traced.
        self._trace: dict[str, Any] = {}
        self._backward = None
        self._input_shapes = input_shapes
        self._forward_vjp = self._forward_vjp_fn(pure)
        self._forward = jax2tf.convert(
            lambda *args: self._forward_vjp(self._trace, *args),
            polymorphic_shapes=[None, None, None, input_shapes],
            with_gradient=True,
            **options,
        )

    def _forward_vjp_fn(self, pure: Callable) -> Callable:
        def forward_vjp(trace, params, state, rng, inputs):
            input_leaves, input_treedef = jax.tree.flatten(inputs)

            def run(params, state, rng, input_leaves):
                outputs, new_state = pure(
                    params, state, rng, jax.tree.unflatten(input_treedef, input_leaves)
                )
                output_leaves, trace["output_treedef"] = jax.tree.flatten(outputs)
                return output_leaves, new_state

            wanted = None
            if self._frozen is not None:
                wanted = ([not f for f in self._frozen], [True] * len(input_leaves))
            vjp = float_vjp(run, params, state, rng, input_leaves, wanted)
            output_leaves, new_state = vjp.output_leaves, vjp.new_state
            residuals, residual_treedef = jax.tree.flatten(vjp.pullback)
            key_impls = [jax.random.key_impl(r) if _is_key(r) else None for r in residuals]
            residuals = [jax.random.key_data(r) if _is_key(r) else r for r in residuals]
            trace.update(
                residual_treedef=residual_treedef,
                key_impls=key_impls,
                param_mask=vjp.param_mask,
                input_mask=vjp.input_mask,
                output_mask=[is_float(o.dtype) for o in output_leaves],
                num_state=len(new_state),
                # jax2tf's own gradient names shapes the same way.
                residual_shapes=[str(tuple(r.shape)) for r in residuals],
                cotangent_shapes=[str(tuple(f.shape)) for f in vjp.float_outputs],
            )
            return output_leaves + new_state, residuals

        return forward_vjp

    def _converted_backward(self) -> Callable:
        if self._backward is None:
            from jax.experimental import jax2tf

            trace = self._trace

            def backward(params, state, rng, inputs, residuals, cotangents):
                # The pullback's structure holds the forward's output shapes,
                # whose symbolic batch dimension belongs to the forward's
                # conversion; this conversion has its own. The structure is
                # therefore rebuilt here by tracing the forward abstractly
                # (nothing runs: the primal arguments only give the shapes).
                fresh: dict[str, Any] = {}
                jax.eval_shape(
                    lambda *args: self._forward_vjp(fresh, *args)[1], params, state, rng, inputs
                )
                residuals = [
                    r if impl is None else jax.random.wrap_key_data(r, impl=impl)
                    for r, impl in zip(residuals, fresh["key_impls"], strict=True)
                ]
                pullback = jax.tree.unflatten(fresh["residual_treedef"], residuals)
                return pullback(cotangents)

            shapes = None
            if self._polymorphic:
                shapes = [
                    None,
                    None,
                    None,
                    self._input_shapes,
                    trace["residual_shapes"],
                    trace["cotangent_shapes"],
                ]
            self._backward = jax2tf.convert(
                backward, polymorphic_shapes=shapes, with_gradient=True, **self._options
            )
        return self._backward

    def __call__(self, *leaves):
        tf = _tf()
        params, state, rng, inputs = jax.tree.unflatten(self._treedef, leaves)
        rng_leaves = jax.tree.leaves(rng)
        input_leaves = jax.tree.leaves(inputs)

        @tf.custom_gradient
        def call(*flat):
            results, residuals = self._forward(*jax.tree.unflatten(self._treedef, flat))
            trace = self._trace
            num_outputs = len(results) - trace["num_state"]
            output_leaves = results[:num_outputs]

            def gradient(*upstream, variables=None):
                cotangents = [
                    tf.zeros_like(out) if ct is None else ct
                    for ct, out, is_float in zip(
                        upstream[:num_outputs], output_leaves, trace["output_mask"], strict=True
                    )
                    if is_float
                ]
                param_grads, input_grads = self._converted_backward()(
                    *jax.tree.unflatten(self._treedef, flat), residuals, cotangents
                )
                return (
                    merge([None] * len(params), param_grads, trace["param_mask"])
                    + [None] * (len(state) + len(rng_leaves))
                    + merge([None] * len(input_leaves), input_grads, trace["input_mask"])
                )

            return list(results), gradient

        results = call(*leaves)
        num_outputs = len(results) - self._trace["num_state"]
        outputs = jax.tree.unflatten(self._trace["output_treedef"], results[:num_outputs])
        return outputs, list(results[num_outputs:])
