"""The model itself as data: `jax.export` programs that run without its source.

A portable layer is stored as three programs per training flag, each over
flat lists of arrays (params, state, rng keys, inputs), with the weights as
arguments, never as constants:

- `forward`: `(params, state, rng, inputs) -> (outputs, new_state)`, for calls
  that need no gradient;
- `forward_vjp`: the same outputs plus the residuals of `jax.vjp` taken with
  respect to the floating-point params and inputs;
- `backward`: `(residuals, float_output_cotangents) -> (param_grads,
  input_grads)`.

`ExportedModel` reloads them and joins them with `jax.custom_vjp`, so every
backend bridge differentiates the loaded model as it differentiates the
source: the backward pass reuses the forward pass's residuals, and no integer
output or integer state ever meets a cotangent (through jax2tf, an integer
output of a differentiated exported call fails with a float0 mismatch).

The inputs have a symbolic batch dimension ("batch", shared by all inputs),
and symbolic dimensions wherever the layer saw unknown ones.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

import jax

from ._config_codec import decode_tree, encode_tree
from ._dtypes import is_float
from ._float_vjp import float_vjp, merge
from ._keras_internals import keras_export_format
from ._program import AbstractInput, is_abstract, with_symbolic_dims
from ._variables import TreeLayout, is_array_leaf

#: Version of the portable layout inside `.keras` files (config + assets).
PORTABLE_FORMAT_VERSION = 1
#: Platforms the programs are lowered for; "tpu" is dropped if it cannot lower.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
PROGRAMS = ("forward", "forward_vjp", "backward")
FLAGS = {False: "inference", True: "training"}
ASSET_SUFFIX = ".jaxexport"


class ExportError(ValueError):
    """The model cannot be expressed as a `jax.export` program."""


def _abstract(tree: Any) -> Any:
    """The tree with its array leaves as AbstractInput (symbolic dims as None)."""

    def leaf(x):
        if not is_array_leaf(x):
            return x
        shape = tuple(d if isinstance(d, int) else None for d in x.shape)
        return AbstractInput(shape, x.dtype)

    return jax.tree.map(leaf, tree)


def _encode_abstract(tree: Any) -> Any:
    """JSON record of a tree of arrays/avals: structure, shapes (None = any), dtypes."""
    tree = _abstract(tree)
    leaves = [x for x in jax.tree.leaves(tree) if is_array_leaf(x)]
    return encode_tree(tree, [x.dtype for x in leaves], custom_nodes=True)


def _decode_abstract(record: Any) -> Any:
    return decode_tree(record, make_array=lambda shape, dtype: AbstractInput(shape, dtype))


def batched_input_specs(inputs: Any) -> Any:
    """Input avals for export: the batch (`_batch`'s rule) and unknown dims symbolic."""
    return with_symbolic_dims(inputs, open_batch=True)


# --------------------------------------------------------------------- export


def export_program(
    program: Any,
    param_avals: Sequence[jax.ShapeDtypeStruct],
    state_avals: Sequence[jax.ShapeDtypeStruct],
    rng_trees: dict[bool, Any],
    input_record: Any,
    platforms: Sequence[str] | None,
    arguments: Sequence[str],
    layer_name: str,
) -> ExportedModel:
    """Exports `program` (the layer's pure function) for both training flags.

    Args:
        program: `program(params, state, rng, inputs, training) -> (outputs,
            new_state)` over flat lists of params and state.
        param_avals / state_avals: what `call_fn` receives (dtypes after
            autocast).
        rng_trees: per training flag, the rng structure with
            `ShapeDtypeStruct` key leaves (or None).
        input_record: the inputs as a tree of `AbstractInput`.
        platforms: lowering platforms, or None for `DEFAULT_PLATFORMS`.
        arguments: `call_fn`'s argument names (kept in the metadata).
        layer_name: for error messages.
    """
    input_specs = batched_input_specs(input_record)
    input_leaves, input_treedef = jax.tree.flatten(input_specs)
    blobs: dict[str, bytes] = {}
    flags: dict[str, Any] = {}
    forward: Any = None
    platforms_used: list[str] = []
    for training, flag in FLAGS.items():
        rng_leaves, rng_treedef = jax.tree.flatten(rng_trees[training])
        exporter = _FlagExporter(program, training, rng_treedef, input_treedef, layer_name)
        args = (list(param_avals), list(state_avals), list(rng_leaves), list(input_leaves))
        exported = exporter.export_all(args, platforms)
        for name, exp in exported.items():
            blobs[f"{name}.{flag}"] = exp.serialize()
        forward = exported["forward"]
        flags[flag] = {
            "rng": _encode_abstract(rng_trees[training]),
            "outputs": _encode_abstract(exporter.output_tree(forward, len(state_avals))),
        }
        platforms_used = list(forward.platforms)
    metadata = {
        "format_version": PORTABLE_FORMAT_VERSION,
        "jax_version": jax.__version__,
        "calling_convention_version": forward.calling_convention_version,
        "platforms": platforms_used,
        "arguments": list(arguments),
        "inputs": _encode_abstract(jax.tree.unflatten(input_treedef, list(input_leaves))),
        "counts": [len(param_avals), len(state_avals)],
        "flags": flags,
        "sha256": {name: hashlib.sha256(blob).hexdigest() for name, blob in sorted(blobs.items())},
    }
    return ExportedModel(metadata, blobs)


class _FlagExporter:
    """Exports the three programs for one training flag."""

    def __init__(self, program, training, rng_treedef, input_treedef, layer_name):
        self.program = program
        self.training = training
        self.rng_treedef = rng_treedef
        self.input_treedef = input_treedef
        self.layer_name = layer_name
        self.output_treedef = None
        self.residual_treedef = None

    def _run(self, params, state, rng_leaves, input_leaves):
        rng = jax.tree.unflatten(self.rng_treedef, rng_leaves)
        inputs = jax.tree.unflatten(self.input_treedef, input_leaves)
        outputs, new_state = self.program(params, state, rng, inputs, self.training)
        leaves, treedef = jax.tree.flatten(outputs)
        for leaf in leaves:
            if not isinstance(leaf, jax.Array):
                raise ExportError(
                    f"`call_fn` returned a non-array output leaf {leaf!r:.80} "
                    f"(type {type(leaf).__name__}); a portable program can only "
                    f"return arrays."
                )
        self.output_treedef = treedef
        return leaves, list(new_state)

    def forward(self, params, state, rng_leaves, input_leaves):
        return self._run(params, state, rng_leaves, input_leaves)

    def forward_vjp(self, params, state, rng_leaves, input_leaves):
        vjp = float_vjp(self._run, params, state, rng_leaves, input_leaves)
        residuals, self.residual_treedef = jax.tree.flatten(vjp.pullback)
        return vjp.output_leaves, vjp.new_state, residuals

    def backward(self, residuals, cotangents):
        pullback = jax.tree.unflatten(self.residual_treedef, residuals)
        param_grads, input_grads = pullback(cotangents)
        return param_grads, input_grads

    def export_all(self, args, platforms) -> dict[str, Any]:
        forward = self._export(self.forward, args, platforms)
        platforms = forward.platforms
        forward_vjp = self._export(self.forward_vjp, args, platforms)
        num_outputs = len(forward.out_avals) - len(args[1])
        residual_avals = list(forward_vjp.out_avals[len(forward.out_avals) :])
        cotangent_avals = [
            a for a in forward.out_avals[:num_outputs] if is_float(a.dtype)
        ]
        backward = self._export(self.backward, (residual_avals, cotangent_avals), platforms)
        return {"forward": forward, "forward_vjp": forward_vjp, "backward": backward}

    def output_tree(self, forward: Any, num_state: int) -> Any:
        num_outputs = len(forward.out_avals) - num_state
        return jax.tree.unflatten(self.output_treedef, list(forward.out_avals[:num_outputs]))

    def _export(self, fn, args, platforms) -> Any:
        platforms = tuple(platforms or DEFAULT_PLATFORMS)
        try:
            try:
                return jax.export.export(jax.jit(fn), platforms=platforms)(*args)
            except Exception as error:  # noqa: BLE001 - retried without TPU below
                if "tpu" not in platforms or "tpu" not in str(error).lower():
                    raise
                platforms = tuple(p for p in platforms if p != "tpu")
                return jax.export.export(jax.jit(fn), platforms=platforms)(*args)
        except ExportError as error:
            raise ExportError(_export_failure(self.layer_name, str(error))) from None
        except Exception as error:  # noqa: BLE001 - reported with the fixes
            cause = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:400]}"
            raise ExportError(_export_failure(self.layer_name, cause, error)) from error


def _export_failure(layer_name: str, cause: str, error: BaseException | None = None) -> str:
    hint = ""
    text = str(error or "").lower()
    if "callback" in text:
        hint = " (host callbacks such as `jax.pure_callback`/`jax.debug.callback` cannot be exported)"
    elif "custom call" in text or "custom_call" in text:
        hint = " (a custom call outside jax.export's stability allow-list)"
    elif "symbolic" in text or "polymorphi" in text or "inconclusive" in text:
        hint = (
            " (the model does not run with a symbolic batch size: avoid using "
            "`x.shape[0]` as a Python number)"
        )
    return (
        f"Cannot save JaxLayer `{layer_name}` as a portable program: `jax.export` "
        f"failed{hint}: {cause}. Two fixes: register `call_fn`/`init_fn` (or the "
        f"framework model's class) with "
        f'`@keras.saving.register_keras_serializable(package="my_package")`, so the '
        f"file refers to your code instead of holding the program, or save the "
        f"weights only with `model.save_weights(...)`. Note: Keras had already "
        f"opened the target file, so it is now empty; save to a new path."
    )


# ----------------------------------------------------------------------- load

# Models already loaded in this process, by the digest of their programs, so
# a config without its assets (clone_model, from_config) finds them again.
_LOADED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _digest(metadata: dict) -> str:
    return hashlib.sha256(repr(sorted(metadata["sha256"].items())).encode()).hexdigest()


class ExportedModel:
    """A portable model: the exported programs and what describes them.

    Callable as a `call_fn` taking `params`, `state`, `rng`, `inputs` and
    `training` (the names in `metadata["arguments"]`, plus `training`).
    """

    def __init__(self, metadata: dict, blobs: dict[str, bytes] | None = None):
        self.metadata = metadata
        self.blobs: dict[str, bytes] = {}
        self._functions: dict[bool, Any] = {}
        self._output_treedefs: dict[bool, Any] = {}
        arguments = list(metadata["arguments"])
        if "training" not in arguments:
            arguments.append("training")
        import inspect

        self.__signature__ = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in arguments]
        )
        self.__qualname__ = "ExportedModel"
        if blobs is not None:
            self.set_blobs(blobs)

    @classmethod
    def from_metadata(cls, metadata: dict) -> ExportedModel:
        """The model with these programs if this process has loaded it, else a new one."""
        check_versions(metadata)
        model = _LOADED.get(_digest(metadata))
        return model if model is not None else cls(metadata)

    @property
    def loaded(self) -> bool:
        return bool(self.blobs)

    def set_blobs(self, blobs: dict[str, bytes]) -> None:
        """Checks and installs the serialized programs."""
        expected = self.metadata["sha256"]
        if sorted(blobs) != sorted(expected):
            raise ValueError(
                f"The portable JaxLayer's programs are incomplete: expected "
                f"{sorted(expected)}, found {sorted(blobs)}. The `.keras` file is "
                f"damaged; save the model again."
            )
        for name, blob in blobs.items():
            if hashlib.sha256(blob).hexdigest() != expected[name]:
                raise ValueError(
                    f"The portable JaxLayer's program `{name}` does not match the "
                    f"checksum in its config: the `.keras` file is damaged. Save the "
                    f"model again."
                )
        self.blobs = dict(blobs)
        self._functions.clear()
        _LOADED[_digest(self.metadata)] = self

    def rng_structure(self, training: bool) -> Any:
        """The rng tree the programs take (AbstractInput leaves), or None."""
        return _decode_abstract(self.metadata["flags"][FLAGS[training]]["rng"])

    def output_structure(self, training: bool) -> Any:
        """The outputs as a tree of AbstractInput (None for symbolic dims)."""
        return _decode_abstract(self.metadata["flags"][FLAGS[training]]["outputs"])

    def input_structure(self) -> Any:
        return _decode_abstract(self.metadata["inputs"])

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise ValueError(
                "This portable JaxLayer has no programs: it was created from a "
                "config alone. Load the model with `keras.models.load_model(path)`, "
                "which reads the programs from the `.keras` file."
            )

    def function(self, training: bool) -> Any:
        """`fn(params, state, rng_leaves, input_leaves) -> (output_leaves, new_state)`."""
        fn = self._functions.get(training)
        if fn is None:
            self._require_loaded()
            fn = self._make_function(training)
            self._functions[training] = fn
        return fn

    def _deserialize(self, name: str) -> Any:
        blob = self.blobs[name]
        try:
            return jax.export.deserialize(bytearray(blob))
        except ImportError as error:
            raise ImportError(
                f"Reading a portable JaxLayer needs the `flatbuffers` package "
                f"({error}). Install it with `pip install flatbuffers` (a "
                f"dependency of jaxlayer)."
            ) from error
        except Exception as error:  # noqa: BLE001 - reported with both versions
            raise ValueError(
                f"Cannot read the portable JaxLayer's program `{name}`: it was "
                f"saved with jax {self.metadata['jax_version']} and this is jax "
                f"{jax.__version__} ({type(error).__name__}: {error}). Load it with a "
                f"jax version that reads it (JAX reads programs up to about 6 months "
                f"old, and at most about 3 weeks newer than itself)."
            ) from error

    def _make_function(self, training: bool) -> Any:
        flag = FLAGS[training]
        forward = self._deserialize(f"forward.{flag}")
        forward_vjp = self._deserialize(f"forward_vjp.{flag}")
        backward = self._deserialize(f"backward.{flag}")
        num_params, num_state = self.metadata["counts"]
        num_outputs = len(forward.out_avals) - num_state
        output_float = [is_float(a.dtype) for a in forward.out_avals[:num_outputs]]
        in_avals = forward.in_avals
        num_inputs = len(jax.tree.leaves(self.input_structure(), is_leaf=is_abstract))
        param_float = [is_float(a.dtype) for a in in_avals[:num_params]]
        input_float = [is_float(a.dtype) for a in in_avals[len(in_avals) - num_inputs :]]
        num_rng = len(in_avals) - num_params - num_state - num_inputs

        @jax.custom_vjp
        def run(params, state, rng, inputs):
            return forward.call(params, state, rng, inputs)

        def run_forward(params, state, rng, inputs):
            outputs, new_state, residuals = forward_vjp.call(params, state, rng, inputs)
            return (outputs, new_state), residuals

        def run_backward(residuals, cotangents):
            output_cotangents, _ = cotangents
            float_cotangents = [
                ct for ct, is_float in zip(output_cotangents, output_float) if is_float
            ]
            param_grads, input_grads = backward.call(residuals, float_cotangents)
            return (
                merge([None] * num_params, param_grads, param_float),
                [None] * num_state,
                [None] * num_rng,
                merge([None] * len(input_float), input_grads, input_float),
            )

        run.defvjp(run_forward, run_backward)
        return run

    def __call__(self, *args: Any) -> Any:
        # Runs while JAX traces the layer (never per eager call), so the stack
        # check below costs nothing at run time.
        if keras_export_format() == "onnx":
            raise ValueError(
                "A portable JaxLayer (loaded from jax.export programs) cannot be "
                "exported to ONNX: jax2onnx converts JAX operations, and the stored "
                "programs are already compiled StableHLO. Export ONNX from the model "
                "built with its source code (on the jax backend), or export this one "
                'with format="tf_saved_model". Received: format=onnx'
            )
        values = dict(zip(self.__signature__.parameters, args))
        training = bool(values.get("training", False))
        params = values.get("params")
        state = values.get("state")
        param_leaves = [x for x in jax.tree.leaves(params) if is_array_leaf(x)]
        state_layout = TreeLayout(state, "state")
        state_leaves = state_layout.array_leaves(state)
        rng_leaves = jax.tree.leaves(values.get("rng"))
        input_leaves = jax.tree.leaves(values["inputs"])
        expected_inputs = len(jax.tree.leaves(self.input_structure(), is_leaf=is_abstract))
        if len(input_leaves) != expected_inputs:
            raise ValueError(
                f"The portable JaxLayer was saved for {expected_inputs} input "
                f"array(s) ({self.describe_inputs()}); it received "
                f"{len(input_leaves)}. Call it with inputs of the saved structure."
            )
        outputs, new_state = self.function(training)(
            param_leaves, state_leaves, rng_leaves, input_leaves
        )
        treedef = jax.tree.structure(self.output_structure(training), is_leaf=is_abstract)
        outputs = jax.tree.unflatten(treedef, outputs)
        if "state" not in self.metadata["arguments"]:
            return outputs
        return outputs, state_layout.rebuild(new_state)

    def describe_inputs(self) -> str:
        def text(x):
            dims = ", ".join("?" if d is None else str(d) for d in x.shape)
            return f"{x.dtype.name}[{dims}]"

        leaves = jax.tree.leaves(self.input_structure(), is_leaf=is_abstract)
        return ", ".join(text(x) for x in leaves)


def check_versions(metadata: dict) -> None:
    """Raises a clear error when this jax cannot run the stored programs."""
    version = metadata.get("format_version")
    if version != PORTABLE_FORMAT_VERSION:
        raise ValueError(
            f"This portable JaxLayer was saved in format version {version}; this "
            f"jaxlayer reads version {PORTABLE_FORMAT_VERSION}. Install the "
            f"jaxlayer version that saved it."
        )
    calling = metadata["calling_convention_version"]
    low = jax.export.minimum_supported_calling_convention_version
    high = jax.export.maximum_supported_calling_convention_version
    if not low <= calling <= high:
        newer = "new" if calling > high else "old"
        raise ValueError(
            f"This portable JaxLayer was saved with jax {metadata['jax_version']} "
            f"(calling convention {calling}); this is jax {jax.__version__}, which "
            f"runs calling conventions {low}..{high}, so the program is too {newer} "
            f"for it. Install a jax that reads it (JAX reads programs up to about 6 "
            f"months old and at most about 3 weeks newer than itself), e.g. "
            f"`pip install jax=={metadata['jax_version']}`."
        )


def asset_files(model: ExportedModel) -> dict[str, bytes]:
    """File name -> content, for the `.keras` archive's assets."""
    return {f"{name}{ASSET_SUFFIX}": blob for name, blob in model.blobs.items()}


def blobs_from_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {
        name[: -len(ASSET_SUFFIX)]: blob
        for name, blob in files.items()
        if name.endswith(ASSET_SUFFIX)
    }
