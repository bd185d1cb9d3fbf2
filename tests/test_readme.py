"""The README's Python examples run, and every public name is documented."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import jaxlayer
from conftest import BACKEND

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="the README examples run once, on the jax backend")


def _runnable(block: str) -> bool:
    # Fragments with `...` and the distribution example (it needs 8 devices,
    # covered by tests/test_distribution.py) are not standalone programs.
    return "..." not in block and "keras.distribution" not in block


@pytest.mark.parametrize("index", [i for i, b in enumerate(BLOCKS) if _runnable(b)])
def test_readme_example_runs(index):
    block = BLOCKS[index]
    for module in re.findall(r"^import (haiku|flax|equinox)", block, flags=re.M):
        pytest.importorskip(module)
    namespace = {}
    # Blocks build on the first one's imports (jax, keras, numpy, JaxLayer).
    exec(compile(BLOCKS[0] if index else "", "README-0", "exec"), namespace)
    exec(compile(block, f"README-{index}", "exec"), namespace)
    layer = namespace.get("layer")
    if layer is not None and "layer(" not in block:
        out = layer(np.ones((4, 64), "float32"))
        assert tuple(out.shape) == (4, 10)
        assert layer.count_params() > 0


def test_every_exported_name_is_documented():
    for name in jaxlayer.__all__:
        if name.startswith("__"):
            continue
        assert f"`{name}" in README or f"{name}(" in README, f"{name} is not in the README"
    for method in ["get_params", "set_params", "get_state", "set_state"]:
        assert method in README
