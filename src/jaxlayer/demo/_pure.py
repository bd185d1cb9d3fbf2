"""The demo CNN in each framework's own pure-JAX form, for the fine-tuning job.

`pure_model(framework, seed, sample)` returns a `PureModel`: the params tree
in the layout the framework's users save (and `load_checkpoint` /
`save_checkpoint` read and write), a pure `apply(tree, images)` in inference
mode, and how to write and read that tree with the framework's checkpoint
tools (Orbax; Equinox's own `.eqx` serialisation for Equinox). No Keras here:
this is the JAX code the fine-tuned weights go back to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import models


@dataclass(frozen=True)
class PureModel:
    """One framework's demo CNN as a tree of arrays and a pure function."""

    tree: Any
    apply: Callable[[Any, Any], Any]  # (tree, images) -> class probabilities
    skip: tuple[str, ...]  # regexes over the Keras layer's names: new head, not from the checkpoint
    body: str  # regex: the kernels LoRA adapts
    suffix: str = ""  # "" (an Orbax directory) or ".eqx"
    save: Callable[[Any, str], None] = lambda tree, path: _orbax_save(tree, path)
    restore: Callable[[str], Any] = lambda path: _orbax_restore(path)


def _orbax_save(tree: Any, path: str) -> None:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(path), tree)
        checkpointer.wait_until_finished()


def _orbax_restore(path: str) -> Any:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.abspath(path))


def pure_model(framework: str, seed: int, sample: Any) -> PureModel:
    """The demo CNN of `framework` initialised from `seed` on `sample` images."""
    import jax

    key = jax.random.key(seed)
    module = models.load(framework)
    if framework == "jax":
        return PureModel(
            module.jax_cnn_init(key, sample),
            lambda tree, x: module.jax_cnn_apply(tree, None, x, False),
            (r"^output\.",),
            r"^(conv|hidden)\.kernel$",
        )
    if framework == "haiku":
        transformed = module.transformed()
        return PureModel(
            transformed.init(key, sample, False),
            lambda tree, x: transformed.apply(tree, None, x, False),
            (r"^linear_1\.",),
            r"^(conv2_d|linear)\.w$",
        )
    if framework == "flax":
        linen = module.register()()
        return PureModel(
            linen.init(key, sample),
            lambda tree, x: linen.apply(tree, x, training=False),
            (r"Dense_1\.",),
            r"(Conv_0|Dense_0)\.kernel$",
        )
    if framework == "nnx":
        return _nnx_model(module, seed)
    return _equinox_model(module, seed)


def _nnx_model(module: Any, seed: int) -> PureModel:
    from flax import nnx

    graphdef, params, rest = nnx.split(module.register()(rngs=nnx.Rngs(seed)), nnx.Param, ...)

    def apply(tree, x):
        state = nnx.clone(params)
        nnx.replace_by_pure_dict(state, tree)
        model = nnx.merge(graphdef, state, rest)
        model.eval()  # no dropout
        return model(x)

    def restore(path):
        # save_checkpoint writes the whole module state; the function takes its params.
        return {name: value for name, value in _orbax_restore(path).items() if name != "dropout"}

    # The dropout's RNG state is the layer's own, not a pretrained weight.
    skip = (r"^out\.", r"^dropout\.rngs\.")
    return PureModel(
        nnx.to_pure_dict(params), apply, skip, r"^(conv|dense)\.kernel$", restore=restore
    )


def _equinox_model(module: Any, seed: int) -> PureModel:
    import equinox as eqx
    import jax

    template = module.register()(seed=seed)
    arrays, static = eqx.partition(template, eqx.is_array)

    def apply(tree, x):
        model = eqx.nn.inference_mode(eqx.combine(tree, static))
        return jax.vmap(model)(x)

    def save(tree, path):  # the whole module, as Equinox users save it
        eqx.tree_serialise_leaves(path, eqx.combine(tree, static))

    def restore(path):
        return eqx.partition(eqx.tree_deserialise_leaves(path, template), eqx.is_array)[0]

    body = r"^(conv|dense)\.weight$"
    return PureModel(arrays, apply, (r"^out\.",), body, ".eqx", save, restore)
