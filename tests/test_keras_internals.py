"""Every private Keras name in `_keras_internals` still resolves.

Each entry there degrades quietly when a Keras release moves it (slower
eager calls, a less reproducible init key, a later export error); this
test makes a move visible instead.
"""

import importlib
import os

import keras
import pytest

from jaxlayer import JaxLayer
from jaxlayer import _keras_internals as internals

BACKEND = os.environ.get("KERAS_BACKEND", "jax")


def test_global_state_scopes_resolve():
    assert internals.keras_internals_available
    assert internals.in_symbolic_scope() is False
    assert internals.autocast_scope_active() is False
    assert internals.global_attribute("current_call_ctx") is None


def test_draw_global_seed_follows_keras_set_random_seed():
    keras.utils.set_random_seed(3)
    first = keras.ops.convert_to_numpy(internals.draw_global_seed())
    keras.utils.set_random_seed(3)
    second = keras.ops.convert_to_numpy(internals.draw_global_seed())
    assert (first == second).all()
    # The import path itself, not the fallback.
    from keras.src.random.seed_generator import draw_seed  # noqa: F401


@pytest.mark.parametrize("module", sorted(internals._KERAS_EXPORT_MODULES))
def test_keras_export_modules_exist(module):
    if module.endswith("litert"):
        pytest.importorskip("keras.src.export.litert")
    importlib.import_module(module)


def test_keras_export_format_is_none_outside_an_export():
    assert internals.keras_export_format() is None


def test_private_layer_attributes_exist():
    layer = JaxLayer(lambda inputs: inputs)
    for name in (
        "_post_build",
        "_lock_state",
        "_called",
        "_untrack_variable",
        "_convert_input_args",
        "_remat_mode",
        "_losses",
    ):
        assert hasattr(layer, name), name
    variable = keras.Variable(1.0)
    assert hasattr(variable, "_autocast")


@pytest.mark.skipif(BACKEND != "torch", reason="torch's device lookup")
def test_torch_default_device_resolves():
    from keras.src.backend.torch.core import get_device  # noqa: F401

    assert (
        internals.torch_default_device() in ("cpu", "cuda", "mps", "xla")
        or ":" in internals.torch_default_device()
    )
