"""`JaxLayer`: a Keras layer holding a JAX model's PyTrees as Keras variables.

This module binds the model into Keras (build, call, symbolic shapes); it
never looks at the active backend. Argument binding lives in `_signature`,
PyTree <-> variable bookkeeping in `_variables`, the pure function in
`_program`, saving (config, assets, portable export) in `_layer_saving` and
`_export`, and everything backend-specific in `_backends`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import keras
import numpy as np
from jax.core import Tracer

from ._backends import get_bridge
from ._eager import keras_would_only_call
from ._layer_saving import LayerSaving, check_save_as
from ._program import AbstractInput, Program, is_shape, placeholders, shape_tree_from_keras
from ._saving import decode_tree
from ._signature import CALL_FN_ARGUMENTS, INIT_FN_ARGUMENTS, FunctionSignature, describe
from ._variables import (
    TreeLayout,
    as_array,
    check_leaf,
    is_array_leaf,
    is_python_number,
    unique_names,
)


def _is_float(dtype: Any) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating) or str(dtype) == "bfloat16"


def _canonical_dtype(dtype: Any) -> np.dtype:
    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(keras.backend.standardize_dtype(dtype))))


def _looks_like_params_and_state(result: Any) -> bool:
    # `(params, state)` as Haiku/Flax return them: a pair of containers.
    return (
        isinstance(result, tuple)
        and len(result) == 2
        and all(isinstance(part, (dict, list)) or part is None for part in result)
        and not any(is_array_leaf(part) for part in result)
    )


@keras.saving.register_keras_serializable(package="jaxlayer")
class JaxLayer(LayerSaving, keras.layers.Layer):
    """A Keras layer that wraps a JAX model given as pure functions.

    The model is `call_fn(params, state, rng, inputs, training)`; arguments
    are bound by exact name, in any order, and all but `inputs` are optional.
    `params` (trainable) and `state` (non-trainable) are PyTrees; their array
    leaves become Keras variables named after their PyTree paths, so the model
    trains with `fit`, saves and loads like any Keras layer.

    Args:
        call_fn: the model's forward function. It may take only `params`,
            `state`, `rng`, `inputs` and `training`. With a `state` argument it
            returns `(outputs, new_state)`, otherwise the outputs alone.
        init_fn: optional `init_fn(rng, inputs, training)` (only `inputs`
            required) returning `params`, or `(params, state)` when `call_fn`
            takes `state`. Called at build time with placeholder inputs of the
            input's shapes and dtypes (unknown dimensions set to 1) unless
            `params` or `state` is given.
        params: optional initial trainable parameters (a PyTree).
        state: optional initial non-trainable state (a PyTree).
        seed: optional int seeding the Keras `SeedGenerator` that produces a
            fresh `rng` key on every training call.
        native_serialization_platforms: accepted for compatibility with
            `keras.layers.JaxLayer`; the platforms the TensorFlow backend
            compiles for, and a portable save lowers for (default: cpu, cuda
            and tpu).
        save_as: how `model.save` stores the layer. `"auto"` (default): by
            reference to `call_fn`/`init_fn` when they are registered Keras
            serializables, otherwise portably. `"portable"`: always as
            `jax.export` programs, so the file loads without the model's code
            (for serving). `"source"`: always by reference (saving fails if
            the functions are not registered).
        **kwargs: the usual Keras layer arguments (`name`, `dtype`,
            `trainable`, ...).

    Call arguments:
        inputs: an array or a PyTree of arrays, handed to `call_fn` as `inputs`.
        training: Python bool; handed to `call_fn` as `training`, and selects
            whether a fresh `rng` key is drawn (`None` is passed in inference).

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from jaxlayer import JaxLayer
        >>> def init_fn(rng, inputs):
        ...     return {"dense": {"kernel": jax.random.normal(rng, (inputs.shape[-1], 3)),
        ...                       "bias": jnp.zeros(3)}}
        >>> def call_fn(params, inputs):
        ...     return inputs @ params["dense"]["kernel"] + params["dense"]["bias"]
        >>> layer = JaxLayer(call_fn, init_fn)
        >>> layer(np.ones((2, 4), "float32")).shape
        (2, 3)
        >>> sorted(v.name for v in layer.trainable_variables)
        ['dense.bias', 'dense.kernel']
    """

    def __init__(
        self,
        call_fn: Callable,
        init_fn: Callable | None = None,
        params: Any = None,
        state: Any = None,
        seed: int | None = None,
        native_serialization_platforms: Any = None,
        save_as: str = "auto",
        **kwargs: Any,
    ) -> None:
        check_save_as(save_as)
        params_spec = kwargs.pop("params_spec", None)
        state_spec = kwargs.pop("state_spec", None)
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
        if params_spec is not None or state_spec is not None:
            params, state = decode_tree(params_spec), decode_tree(state_spec)
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
        bridge = get_bridge()  # rejects unsupported backends at construction
        super().__init__(**kwargs)
        self.call_fn = call_fn
        self.init_fn = init_fn
        self.native_serialization_platforms = native_serialization_platforms
        self.save_as = save_as
        self._set_untracked("_bridge", bridge)
        self._set_untracked("_signature", signature)
        self._set_untracked("_init_signature", init_signature)
        self._set_untracked("_seed", seed)
        self._set_untracked("_needs_init", takes_variables and params is None and state is None)
        self._set_untracked("_pending_input_dtypes", None)
        self._set_untracked("_input_dtypes", None)
        self._set_untracked("_abstract_seeds", False)
        self._set_untracked("_input_record", None)  # inputs seen, for export
        self._set_untracked("_export_cache", None)
        self._reset_variables()
        self.seed_generator = keras.random.SeedGenerator(seed) if signature.takes("rng") else None
        # The generator's state variable, held by the layer itself (see
        # `_get_call_seed`); untracked: Keras already tracks it as the
        # generator's.
        self._set_untracked(
            "_seed_state", None if self.seed_generator is None else self.seed_generator.state
        )
        if params is not None or state is not None:
            self._create_variables(params, state)
            self._mark_built()
        elif not takes_variables:
            # Nothing to initialise: `init_fn` is never needed.
            self._mark_built()

    # ------------------------------------------------------------------ state

    def _set_untracked(self, name: str, value: Any) -> None:
        # Keras wraps lists/dicts assigned to layer attributes into tracked
        # containers, which are different PyTrees; keep ours as they are.
        object.__setattr__(self, name, value)

    def _reset_variables(self) -> None:
        self._set_untracked("_param_variables", [])
        self._set_untracked("_state_variables", [])
        self._set_untracked("_params_layout", TreeLayout(None, "params"))
        self._set_untracked("_state_layout", TreeLayout(None, "state"))
        self._set_untracked("_program", self._make_program())
        self._set_untracked("_params_tree", None)
        self._set_untracked("_state_tree", None)

    def _make_program(self) -> Program:
        program = Program(
            self._signature,
            self._params_layout,
            self._state_layout,
            [v.shape for v in self._state_variables],
            [_canonical_dtype(v.dtype) for v in self._state_variables],
        )
        program.native_serialization_platforms = self.native_serialization_platforms
        return program

    def _create_variables(self, params: Any, state: Any, handover: list | None = None) -> None:
        """Creates one Keras variable per array leaf; all or nothing.

        `handover=[params, state]` (trees only the layer holds, from `init_fn`)
        is emptied, and each initial leaf is released as soon as its variable
        holds its copy, so the build never holds two copies of the parameters.
        """
        if handover is not None:
            params, state = handover
            handover.clear()
        params_layout = TreeLayout(params, "params")
        state_layout = TreeLayout(state, "state")
        param_leaves = params_layout.array_leaves(params)
        state_leaves = state_layout.array_leaves(state)
        del params, state  # from here on, the leaf lists hold our only references
        names = unique_names(params_layout.names() + state_layout.names(), set())
        param_names, state_names = names[: params_layout.num_arrays], names[params_layout.num_arrays :]
        created: list = []
        try:
            param_variables = []
            for name, leaf in zip(param_names, _released_one_by_one(param_leaves)):
                leaf = as_array(leaf)
                float_leaf = _is_float(leaf.dtype)
                variable = self.add_weight(
                    shape=tuple(leaf.shape),
                    # Float parameters follow the dtype policy; integer and
                    # boolean leaves keep their dtype and cannot be trained.
                    dtype=None if float_leaf else _canonical_dtype(leaf.dtype),
                    initializer=self._initial_value(leaf),
                    trainable=float_leaf,
                    name=name,
                )
                created.append(variable)
                param_variables.append(variable)
            state_variables = []
            for name, leaf in zip(state_names, _released_one_by_one(state_leaves)):
                leaf = as_array(leaf)
                variable = self.add_weight(
                    shape=tuple(leaf.shape),
                    # State keeps its own dtype and is never autocast, like
                    # BatchNormalization's moving statistics.
                    dtype=_canonical_dtype(leaf.dtype),
                    initializer=self._initial_value(leaf),
                    trainable=False,
                    autocast=False,
                    name=name,
                )
                created.append(variable)
                state_variables.append(variable)
        except Exception:
            for variable in created:
                self._untrack_variable(variable)
            raise
        for variable in created:
            self._bridge.adopt_variable(variable)
        self._set_untracked("_params_layout", params_layout)
        self._set_untracked("_state_layout", state_layout)
        self._set_untracked("_param_variables", param_variables)
        self._set_untracked("_state_variables", state_variables)
        self._set_untracked("_params_tree", params_layout.rebuild(param_variables))
        self._set_untracked("_state_tree", state_layout.rebuild(state_variables))
        self._set_untracked("_program", self._make_program())

    def _initial_value(self, leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return self._bridge.from_jax(leaf)
        return leaf

    # ------------------------------------------------------------------ build

    def _mark_built(self) -> None:
        # What Keras's build wrapper does after `build`, for layers whose
        # variables exist at construction.
        self.built = True
        self._post_build()
        self._lock_state()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "training" in kwargs and not isinstance(kwargs["training"], (bool, type(None))):
            kwargs["training"] = _static_training(kwargs["training"])
        if not self.built and self._needs_init:
            inputs = args[0] if args else kwargs.get("inputs")
            self._build_for_inputs(inputs)
        if self.built and len(args) == 1 and self._is_plain_eager_call(args[0], kwargs):
            # Keras's `Layer.__call__` would only forward the tensor to `call`
            # here; skipping it saves its per-call overhead (~0.1-0.3 ms on CPU),
            # which would dominate eager calls of small compiled models.
            if not self._called:
                self._called = True
            return self.call(args[0], training=bool(kwargs.get("training")))
        return super().__call__(*args, **kwargs)

    def _is_plain_eager_call(self, inputs: Any, kwargs: dict) -> bool:
        if kwargs and (len(kwargs) > 1 or "training" not in kwargs):
            return False
        if not isinstance(kwargs.get("training", False), bool):
            return False
        return (
            self._bridge.is_eager_tensor(inputs)
            and type(self).call is JaxLayer.call
            and keras_would_only_call(self, inputs)
        )

    def _build_for_inputs(self, inputs: Any) -> None:
        def shape_of(x):
            return tuple(None if d is None else int(d) for d in x.shape)

        def dtype_of(x):
            return keras.backend.standardize_dtype(x.dtype)

        inputs = jax.tree.map(lambda x: x if hasattr(x, "shape") else np.asarray(x), inputs)
        self._record_inputs(inputs, lambda x: self._input_dtype_for(dtype_of(x)))
        shapes = jax.tree.map(shape_of, inputs)
        dtypes = jax.tree.map(dtype_of, inputs)
        with self._bridge.build_context(inputs, self.name):
            self._set_untracked("_pending_input_dtypes", dtypes)
            try:
                self.build(shapes)
            finally:
                self._set_untracked("_pending_input_dtypes", None)

    def build(self, input_shape: Any = None) -> None:
        """Creates the variables by calling `init_fn` on placeholder inputs.

        Called by Keras on the first call; called directly, float inputs are
        assumed (the layer's compute dtype). Unknown dimensions become 1.
        """
        if not self._needs_init or self._param_variables or self._state_variables:
            return
        if self._init_signature is None:
            raise ValueError(
                f"JaxLayer `{self.name}` has no `init_fn` to build its variables. "
                f"Pass `init_fn=` or the initial `params=`/`state=`."
            )
        shapes = shape_tree_from_keras(input_shape)
        dtypes = self._pending_input_dtypes
        if dtypes is None:
            dtypes = jax.tree.map(lambda _: self.compute_dtype, shapes, is_leaf=is_shape)
        abstract = jax.tree.map(
            lambda shape, dtype: AbstractInput(shape, self._input_dtype_for(dtype)),
            shapes,
            dtypes,
            is_leaf=is_shape,
        )
        self._create_variables(None, None, handover=list(self._run_init_fn(placeholders(abstract))))
        self._set_untracked("_input_dtypes", jax.tree.map(lambda a: a.dtype.name, abstract, is_leaf=lambda x: isinstance(x, AbstractInput)))

    def _input_dtype_for(self, dtype: Any) -> np.dtype:
        # Keras casts float inputs to the compute dtype before `call`.
        dtype = keras.backend.standardize_dtype(dtype)
        if self.autocast and _is_float(dtype) and self._convert_input_args:
            dtype = self.compute_dtype
        return jax.numpy.dtype(dtype)

    def _run_init_fn(self, inputs: Any) -> tuple[Any, Any]:
        rng = jax.tree.map(self._bridge.seed_to_key, self._get_init_rng())
        result = self._init_signature(rng=rng, inputs=inputs, training=True)
        fn = describe(self.init_fn)
        if self._signature.takes("state"):
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                raise ValueError(
                    f"`init_fn` ({fn}) must return `(params, state)` because "
                    f"`call_fn` ({describe(self.call_fn)}) takes a `state` argument; "
                    f"it returned a {type(result).__name__}. Return the initial "
                    f"state too (use `hk.transform_with_state` for Haiku models), or "
                    f"remove `state` from `call_fn`."
                )
            return result[0], result[1]
        if _looks_like_params_and_state(result):
            raise ValueError(
                f"`init_fn` ({fn}) returned a pair of containers, which looks like "
                f"`(params, state)`, but `call_fn` ({describe(self.call_fn)}) has "
                f"no `state` argument. Add `state` to `call_fn` (returning "
                f"`(outputs, new_state)`), or return the params alone."
            )
        return result, None

    def _get_init_seed(self) -> Any:
        from keras.src.random.seed_generator import draw_seed

        # The global seed generator, as keras.layers.JaxLayer uses.
        return draw_seed(None)

    def _get_init_rng(self) -> Any:
        """The seed (or PyTree of seeds) handed to `init_fn` as `rng`."""
        return self._get_init_seed()

    def _get_call_seed(self) -> Any:
        if self._abstract_seeds:
            return jax.ShapeDtypeStruct((2,), np.uint32)
        # `SeedGenerator.next()`, through the layer's own reference to the
        # generator's variable. In Keras's NNX mode the generator is not an NNX
        # node, so `nnx.jit` would not lift its variable and the draw would
        # leave a tracer in it; a variable held by the layer is lifted in and
        # out of the transform like the layer's weights.
        state = self._seed_state
        seed = state.value * 1
        increment = keras.ops.convert_to_tensor(np.array([0, 1]), dtype=state.dtype)
        state.assign(keras.ops.add(seed, increment))
        return seed

    def _get_call_rng(self, training: bool) -> Any:
        """The seed (or PyTree of seeds) handed to `call_fn` as `rng`.

        A fresh seed in training, None in inference (as keras.layers.JaxLayer).
        """
        return self._get_call_seed() if training else None

    # ------------------------------------------------------------------- call

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self._call_with(self._run, inputs, training)

    def _call_with(self, run: Callable, inputs: Any, training: Any) -> Any:
        """Draws the rng, reads the variables, runs `run`, writes the new state.

        Everything stateful happens here, outside `run`, so that a
        rematerialized `run` (recomputed in the backward pass by some
        backends) sees the same rng, params and state the forward pass saw.
        """
        if self._input_record is None:
            self._record_inputs(inputs)
        params = [v.value for v in self._param_variables]
        state = [v.value for v in self._state_variables]
        if isinstance(training, Tracer):
            outputs, new_state = self._run_with_traced_flag(run, inputs, params, state, training)
        else:
            training = bool(training)
            rng = self._get_call_rng(training) if self.seed_generator is not None else None
            outputs, new_state = run(inputs, rng, params, state, training=training)
        for variable, value in zip(self._state_variables, new_state):
            variable.assign(value)
        return outputs

    def _run_with_traced_flag(
        self, run: Callable, inputs: Any, params: list, state: list, training: Any
    ) -> tuple[Any, list]:
        """Both programs, chosen by `jax.lax.cond` on a traced `training` flag.

        A JAX transformation of an enclosing model can trace the flag Keras
        passes (Keras's remat of a whole model created inside
        `keras.RematScope` runs its `call` under `jax.checkpoint`). A layer
        with state or an rng cannot be run so: its new state, or its seed generator's, would be a value of the
        enclosing transformation's trace, which Keras reads after that trace
        has ended.
        """
        if self._state_variables or self.seed_generator is not None:
            what = "state" if self._state_variables else "an `rng` (a Keras seed generator)"
            raise ValueError(
                f"JaxLayer `{self.name}` has {what} and was called with a traced "
                f"`training` flag: a JAX transformation of the enclosing model traced "
                f"it (Keras's remat of a whole model created inside "
                f"`keras.RematScope`), and the update could not leave that "
                f"transformation. Create the model outside `keras.RematScope` and the "
                f"layers inside it: each layer's program is then rematerialized, with "
                f"its rng draw and state update outside. Received: training={training}"
            )

        def branch(flag: bool) -> Callable:
            def run_branch(operands):
                outputs, new_state = run(inputs, None, *operands, training=flag)
                return outputs, list(new_state)

            return run_branch

        try:
            return jax.lax.cond(training, branch(True), branch(False), (params, state))
        except TypeError as error:
            raise ValueError(
                f"JaxLayer `{self.name}` was called with a traced `training` flag (a JAX "
                f"transformation of the enclosing model traced it), so both the "
                f"training and the inference program run under `jax.lax.cond`, which "
                f"needs their outputs to have the same structure, shapes and dtypes. "
                f"Make `call_fn` return the same kind of outputs for both values of "
                f"`training`, or create the model outside `keras.RematScope` (and the "
                f"layers inside it). JAX said: {error}"
            ) from error

    def _run(self, inputs: Any, rng: Any, params: list, state: list, training: bool) -> Any:
        return self._bridge.run(self._program, params, state, rng, inputs, training)

    def rematerialized_call(self, layer_call: Any, *args: Any, **kwargs: Any) -> Any:
        """Keras's remat (`keras.RematScope`) of the pure part of `call`.

        The training flag stays a Python value (it selects the program), and
        the rng draw, the variable reads and the state update stay outside
        the rematerialized function, so a recomputation in the backward pass
        reproduces the forward pass exactly.
        """
        if not self._remat_mode or layer_call != self.call:
            return super().rematerialized_call(layer_call, *args, **kwargs)

        def remat_run(inputs, rng, params, state, training):
            pure = functools.partial(self._run, training=training)
            return super(JaxLayer, self).rematerialized_call(pure, *args, **kwargs)(
                inputs, rng, params, state
            )

        def call(inputs: Any, training: Any = False) -> Any:
            return self._call_with(remat_run, inputs, training)

        return call

    def compute_output_spec(self, inputs: Any, training: bool = False) -> Any:
        training = bool(training)

        def abstract(x):
            return AbstractInput(x.shape, self._input_dtype_for(x.dtype))

        self._record_inputs(inputs, lambda x: self._input_dtype_for(x.dtype))
        rng = self._abstract_call_rng(training) if self.seed_generator is not None else None
        outputs, _ = self._program.output_shapes(
            [self._call_aval(v) for v in self._param_variables],
            [self._call_aval(v) for v in self._state_variables],
            rng,
            jax.tree.map(abstract, inputs),
            training,
        )
        return jax.tree.map(
            lambda a: keras.KerasTensor(a.shape, dtype=a.dtype.name),
            outputs,
            is_leaf=lambda x: isinstance(x, AbstractInput),
        )

    def _call_aval(self, variable: Any) -> jax.ShapeDtypeStruct:
        """Shape and dtype of a variable as `call_fn` receives it (after autocast)."""
        dtype = _canonical_dtype(variable.dtype)
        if variable._autocast and _is_float(dtype) and self.autocast:
            dtype = jax.numpy.dtype(self.compute_dtype)
        return jax.ShapeDtypeStruct(tuple(variable.shape), dtype)

    def _abstract_call_rng(self, training: bool) -> Any:
        # The structure `_get_call_rng` returns, with shape placeholders for
        # the seeds, so that shape inference does not advance the generator.
        self._set_untracked("_abstract_seeds", True)
        try:
            return self._get_call_rng(training)
        finally:
            self._set_untracked("_abstract_seeds", False)

    # ------------------------------------------------------ params and state

    @property
    def params(self) -> Any:
        """The `params` PyTree with Keras variables at its array leaves."""
        return self._params_tree

    @property
    def state(self) -> Any:
        """The `state` PyTree with Keras variables at its array leaves."""
        return self._state_tree

    def get_params(self) -> Any:
        """The current `params` as a PyTree of JAX arrays.

        Examples:
            >>> import jax.numpy as jnp
            >>> from jaxlayer import JaxLayer
            >>> layer = JaxLayer(lambda params, inputs: inputs * params["w"],
            ...                  params={"w": jnp.float32(2.0)})
            >>> layer.get_params()
            {'w': Array(2., dtype=float32)}
        """
        return self._params_layout.rebuild([self._bridge.variable_to_jax(v) for v in self._param_variables])

    def get_state(self) -> Any:
        """The current `state` as a PyTree of JAX arrays."""
        return self._state_layout.rebuild([self._bridge.variable_to_jax(v) for v in self._state_variables])

    def set_params(self, params: Any) -> None:
        """Loads `params` (same structure, shapes and dtypes) into the variables.

        Nothing is changed unless every leaf passes the checks.
        """
        self._assign_tree(params, self._params_layout, self._param_variables, "set_params")

    def set_state(self, state: Any) -> None:
        """Loads `state` (same structure, shapes and dtypes) into the variables.

        Nothing is changed unless every leaf passes the checks.
        """
        self._assign_tree(state, self._state_layout, self._state_variables, "set_state")

    def _assign_tree(self, tree: Any, layout: TreeLayout, variables: list, method: str) -> None:
        if not self.built:
            raise ValueError(
                f"`{method}` was called on JaxLayer `{self.name}` before it was "
                f"built. Call the layer once (or `layer.build(input_shape)`) first."
            )
        fix = (
            f"Pass a tree shaped like `layer.get_{layout.root}()`. Nothing was changed."
        )
        what = f"`{method}` received a tree that"
        arrays = layout.match(tree, f"The tree passed to `{method}`", fix)
        # A Python number where the variable is a scalar takes its dtype.
        arrays = [
            np.asarray(leaf, dtype=_canonical_dtype(v.dtype)) if is_python_number(leaf) else leaf
            for leaf, v in zip(arrays, variables)
        ]
        for path, leaf, variable in zip(layout.array_paths, arrays, variables):
            if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
                leaf_type = type(leaf).__name__
                raise ValueError(
                    f"{what} has a {leaf_type} at `{layout.root}"
                    f"{jax.tree_util.keystr(tuple(path))}`, expected an array. {fix}"
                )
            check_leaf(
                path,
                layout.root,
                leaf.shape,
                keras.backend.standardize_dtype(leaf.dtype),
                variable.shape,
                keras.backend.standardize_dtype(variable.dtype),
                f"The tree passed to `{method}`",
                fix,
            )
        for leaf, variable in zip(arrays, variables):
            variable.assign(leaf)


def _static_training(training: Any) -> Any:
    """The Python value of a `training` flag that a trace turned into an array.

    Keras's remat of an enclosing model (`keras.RematScope(mode="full")`) runs
    its `call` under `jax.checkpoint`, which traces the flag it passes on;
    the outer layer's Keras call context still holds it as a Python bool.
    """
    if not isinstance(training, Tracer):
        return training
    from keras.src.backend.common import global_state

    context = global_state.get_global_attribute("current_call_ctx")
    value = getattr(context, "training", None)
    return value if isinstance(value, bool) else training


def _released_one_by_one(leaves: list):
    """Yields the leaves, dropping the list's reference to each as it is taken."""
    for index in range(len(leaves)):
        leaf, leaves[index] = leaves[index], None
        yield leaf
