"""The layer's rng: the seeds handed to `init_fn` and `call_fn` as `rng`.

`init_fn` gets a seed from Keras's global seed generator (as
`keras.layers.JaxLayer` does); `call_fn` gets a fresh seed from the layer's
own `SeedGenerator` on every training call, and None in inference.
Subclasses override `_get_init_rng` / `_get_call_rng` to hand over trees of
seeds (Flax's streams). Bridges turn a seed into a raw uint32[2] JAX key with
`seed_words`'s rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import keras
import numpy as np

from ._keras_internals import draw_global_seed

if TYPE_CHECKING:
    # For the type checker only: the mixin is always combined with a Layer.
    _MixinBase = keras.layers.Layer
else:
    _MixinBase = object


def seed_words(seed: Any) -> np.ndarray:
    """A Keras seed (two integers of any integer dtype) as uint32 JAX key words.

    torch and tensorflow store seeds signed; each word is reduced modulo
    2**32, which keeps every bit, so the counter word the seed generator
    increments stays in the key.
    """
    seed = np.asarray(seed)
    if seed.dtype == np.uint32:
        return seed
    return (seed.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)


class RngHooks(_MixinBase):
    """The rng hooks of `JaxLayer` (a mixin; see the module docstring)."""

    # Set by `JaxLayer.__init__`; declared for the type checker.
    _abstract_seeds: bool
    _seed_state: Any

    if TYPE_CHECKING:

        def _set_untracked(self, name: str, value: Any) -> None: ...

    def _get_init_seed(self) -> Any:
        # The global seed generator, as keras.layers.JaxLayer uses.
        return draw_global_seed()

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

    def _abstract_call_rng(self, training: bool) -> Any:
        # The structure `_get_call_rng` returns, with shape placeholders for
        # the seeds, so that shape inference does not advance the generator.
        self._set_untracked("_abstract_seeds", True)
        try:
            return self._get_call_rng(training)
        finally:
            self._set_untracked("_abstract_seeds", False)
