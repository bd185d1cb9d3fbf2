"""`JaxLayer`: a Keras layer holding a JAX model's PyTrees as Keras variables.

This module is the layer's build and call; it never looks at the active
backend. Argument checks: `_signature`; PyTree <-> variables and `set_params`
checks: `_variables`; the pure function and its abstract inputs: `_program`;
rng hooks: `_rng`; remat: `_remat`; the eager shortcut: `_eager`; Keras
saving hooks: `_save_hooks`; checkpoints: `_checkpoint`; LoRA and int8:
`_lora`, `_quantize`, `_param_forms`; backends: `_backends`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import keras
import numpy as np
from jax.core import Tracer

from ._backends import get_bridge
from ._checkpoint import CheckpointHooks
from ._dtypes import canonical_dtype, is_float
from ._eager import is_plain_eager_call
from ._lora import LoraHooks
from ._param_forms import pop_form_options
from ._program import (
    AbstractInput,
    Program,
    is_abstract,
    is_shape,
    placeholders,
    record_inputs,
    shape_tree_from_keras,
)
from ._quantize import QuantizeHooks
from ._remat import rematerialized_call, run_with_traced_flag, static_training
from ._rng import RngHooks
from ._save_hooks import LayerSaving, check_save_as
from ._signature import check_layer_arguments, split_init_result
from ._variables import TreeLayout, as_array, assign_tree, released_one_by_one, unique_names


@keras.saving.register_keras_serializable(package="jaxlayer")
class JaxLayer(RngHooks, LayerSaving, CheckpointHooks, LoraHooks, QuantizeHooks, keras.layers.Layer):
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
        signature, init_signature = check_layer_arguments(call_fn, init_fn, params, state, seed)
        bridge = get_bridge()  # rejects unsupported backends at construction
        form_options = pop_form_options(kwargs)  # LoRA and int8 of a saved layer
        super().__init__(**kwargs)
        self._init_forms(form_options)
        self.call_fn = call_fn
        self.init_fn = init_fn
        self.native_serialization_platforms = native_serialization_platforms
        self.save_as = save_as
        takes_variables = signature.takes("params") or signature.takes("state")
        for name, value in (
            ("_bridge", bridge),
            ("_signature", signature),
            ("_init_signature", init_signature),
            ("_seed", seed),
            ("_needs_init", takes_variables and params is None and state is None),
            ("_pending_input_dtypes", None),  # the input dtypes during a build
            ("_input_dtypes", None),  # the input dtypes `init_fn` was called with
            ("_abstract_seeds", False),  # `_get_call_seed` returns shapes only
            ("_input_record", None),  # the inputs seen, for a portable export
            ("_export_cache", None),
        ):
            self._set_untracked(name, value)
        self._install_variables((TreeLayout(None, "params"), TreeLayout(None, "state")), [], [])
        self.seed_generator = keras.random.SeedGenerator(seed) if signature.takes("rng") else None
        # The generator's state variable, held by the layer itself (see `_get_call_seed`);
        # untracked: Keras already tracks it as the generator's.
        self._set_untracked("_seed_state", None if self.seed_generator is None else self.seed_generator.state)
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

    def _install_variables(self, layouts: tuple, params: list, state: list) -> None:
        """Makes these variables the layer's `params` and `state`, with a new program."""
        self._set_untracked("_params_layout", layouts[0])
        self._set_untracked("_state_layout", layouts[1])
        self._set_untracked("_param_variables", params)
        self._set_untracked("_state_variables", state)
        self._set_untracked("_params_tree", layouts[0].rebuild(params))
        self._set_untracked("_state_tree", layouts[1].rebuild(state))
        self._set_untracked("_program", self._make_program())

    def _make_program(self) -> Program:
        program = Program(
            self._signature,
            self._params_layout,
            self._state_layout,
            [v.shape for v in self._state_variables],
            [canonical_dtype(v.dtype) for v in self._state_variables],
            *self._program_forms(),
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
        layouts = (TreeLayout(params, "params"), TreeLayout(state, "state"))
        leaves = layouts[0].array_leaves(params) + layouts[1].array_leaves(state)
        del params, state  # from here on, `leaves` holds our only references
        names = unique_names(layouts[0].names() + layouts[1].names(), set())
        is_state = [False] * layouts[0].num_arrays + [True] * layouts[1].num_arrays
        created: list = []
        try:
            for name, leaf, state_leaf in zip(names, released_one_by_one(leaves), is_state):
                leaf = as_array(leaf)
                # Float params are trainable and follow the dtype policy; other
                # params, and all state, keep their own dtype and are never
                # autocast (like BatchNormalization's moving statistics).
                trainable = not state_leaf and is_float(leaf.dtype)
                variable = self.add_weight(
                    shape=tuple(leaf.shape),
                    dtype=None if trainable else canonical_dtype(leaf.dtype),
                    initializer=self._bridge.from_jax(leaf) if isinstance(leaf, jax.Array) else leaf,
                    trainable=trainable,
                    autocast=not state_leaf,
                    name=name,
                )
                created.append(variable)
        except Exception:
            for variable in created:
                self._untrack_variable(variable)
            raise
        for variable in created:
            self._bridge.adopt_variable(variable)
        num_params = layouts[0].num_arrays
        self._reset_forms()
        self._install_variables(layouts, created[:num_params], created[num_params:])
        self._apply_pending_forms()  # a saved layer's int8 kernels and LoRA adapters

    # ------------------------------------------------------------------ build

    def _mark_built(self) -> None:
        # What Keras's build wrapper does after `build`, for layers whose
        # variables exist at construction.
        self.built = True
        self._post_build()
        self._lock_state()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "training" in kwargs and not isinstance(kwargs["training"], (bool, type(None))):
            kwargs["training"] = static_training(kwargs["training"])
        if not self.built and self._needs_init:
            self._build_for_inputs(args[0] if args else kwargs.get("inputs"))
        if type(self).call is JaxLayer.call and is_plain_eager_call(self, args, kwargs):
            # Keras's `Layer.__call__` would only forward the tensor to `call`
            # here; skipping it saves its per-call overhead (~0.1-0.3 ms on CPU),
            # which would dominate eager calls of small compiled models.
            if not self._called:
                self._called = True
            return self.call(args[0], training=bool(kwargs.get("training")))
        return super().__call__(*args, **kwargs)

    def _build_for_inputs(self, inputs: Any) -> None:
        inputs = jax.tree.map(lambda x: x if hasattr(x, "shape") else np.asarray(x), inputs)
        self._record_inputs(inputs)
        shapes = jax.tree.map(lambda x: tuple(None if d is None else int(d) for d in x.shape), inputs)
        dtypes = jax.tree.map(lambda x: keras.backend.standardize_dtype(x.dtype), inputs)
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
        rng = jax.tree.map(self._bridge.seed_to_key, self._get_init_rng())
        result = self._init_signature(rng=rng, inputs=placeholders(abstract), training=True)
        handover = list(split_init_result(result, self.init_fn, self.call_fn, self._signature.takes("state")))
        del result  # `handover` is emptied as the variables take the leaves
        self._create_variables(None, None, handover=handover)
        self._set_untracked(
            "_input_dtypes", jax.tree.map(lambda a: a.dtype.name, abstract, is_leaf=is_abstract)
        )

    def _input_dtype_for(self, dtype: Any) -> np.dtype:
        # Keras casts float inputs to the compute dtype before `call`.
        dtype = keras.backend.standardize_dtype(dtype)
        if self.autocast and is_float(dtype) and self._convert_input_args:
            dtype = self.compute_dtype
        return jax.numpy.dtype(dtype)

    def _record_inputs(self, inputs: Any) -> None:
        """Remembers the inputs' structure, shapes and dtypes (as `call_fn` sees
        them) for a portable export; dimensions that differ become None."""
        record = record_inputs(self._input_record, inputs, lambda x: self._input_dtype_for(x.dtype))
        self._set_untracked("_input_record", record)

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
        params = [v.value for v in self._call_variables()]
        state = [v.value for v in self._state_variables]
        if isinstance(training, Tracer):
            outputs, new_state = run_with_traced_flag(self, run, inputs, params, state, training)
        else:
            training = bool(training)
            rng = self._get_call_rng(training) if self.seed_generator is not None else None
            outputs, new_state = run(inputs, rng, params, state, training=training)
        for variable, value in zip(self._state_variables, new_state):
            variable.assign(value)
        return outputs

    def _run(self, inputs: Any, rng: Any, params: list, state: list, training: bool) -> Any:
        return self._bridge.run(self._program, params, state, rng, inputs, training)

    def rematerialized_call(self, layer_call: Any, *args: Any, **kwargs: Any) -> Any:
        """Keras's remat (`keras.RematScope`) of the pure part of `call` (see `_remat`)."""
        keras_remat = super().rematerialized_call
        if not self._remat_mode or layer_call != self.call:
            return keras_remat(layer_call, *args, **kwargs)
        return rematerialized_call(self, lambda fn: keras_remat(fn, *args, **kwargs))

    def compute_output_spec(self, inputs: Any, training: bool = False) -> Any:
        training = bool(training)
        self._record_inputs(inputs)
        rng = self._abstract_call_rng(training) if self.seed_generator is not None else None
        outputs, _ = self._program.output_shapes(
            [self._call_aval(v) for v in self._program_variables()],
            [self._call_aval(v) for v in self._state_variables],
            rng,
            jax.tree.map(lambda x: AbstractInput(x.shape, self._input_dtype_for(x.dtype)), inputs),
            training,
        )
        return jax.tree.map(
            lambda a: keras.KerasTensor(a.shape, dtype=a.dtype.name), outputs, is_leaf=is_abstract
        )

    def _call_aval(self, variable: Any) -> jax.ShapeDtypeStruct:
        """Shape and dtype of a variable as `call_fn` receives it (after autocast)."""
        dtype = canonical_dtype(variable.dtype)
        if variable._autocast and is_float(dtype) and self.autocast:
            dtype = jax.numpy.dtype(self.compute_dtype)
        return jax.ShapeDtypeStruct(tuple(variable.shape), dtype)

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
        return self._params_layout.rebuild(self._plain_params_list())

    def get_state(self) -> Any:
        """The current `state` as a PyTree of JAX arrays."""
        return self._state_layout.rebuild([self._bridge.variable_to_jax(v) for v in self._state_variables])

    def set_params(self, params: Any) -> None:
        """Loads `params` (same structure, shapes and dtypes) into the variables.

        Nothing is changed unless every leaf passes the checks.
        """
        self._check_plain_params("set_params")
        assign_tree(self.name, self.built, params, self._params_layout, self._param_variables, "set_params")

    def set_state(self, state: Any) -> None:
        """Loads `state` (same structure, shapes and dtypes) into the variables.

        Nothing is changed unless every leaf passes the checks.
        """
        assign_tree(self.name, self.built, state, self._state_layout, self._state_variables, "set_state")

