"""Run in a fresh process: a portable `.keras` with int8 kernels and LoRA
adapters loads without Flax, predicts as saved, and LoRA training goes on.

Usage: python lora_portable_check.py DIR (see test_lora_quantize.py).
Prints one JSON line.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from pathlib import Path

BLOCKED = ("flax", "haiku", "equinox", "optax")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: a portable model must load without it")
        return None


sys.meta_path.insert(0, _Blocker())

import keras  # noqa: E402
import numpy as np  # noqa: E402

import jaxlayer  # noqa: E402


def main(directory: Path) -> None:
    model = keras.models.load_model(directory / "qlora.keras")
    layer = model.layers[0]
    xtest = np.load(directory / "xtest.npy")
    expected = np.load(directory / "expected.npy")
    report = {
        "class": type(layer).__name__,
        "portable": isinstance(layer, jaxlayer.PortableLayer),
        "quantization_mode": layer.quantization_mode,
        "lora_rank": layer.lora_rank,
        "max_diff": float(np.abs(np.asarray(model(xtest)) - expected).max()),
    }
    before = {v.name: np.asarray(v.numpy()) for v in layer.weights}
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(np.load(directory / "x.npy"), np.load(directory / "y.npy"), epochs=3, batch_size=64, verbose=0)
    after = {v.name: np.asarray(v.numpy()) for v in layer.weights}
    losses = history.history["loss"]
    report["loss_fell"] = bool(losses[-1] < losses[0])
    report["adapters_moved"] = all(
        not np.array_equal(before[n], after[n]) for n in before if n.endswith(".lora_b")
    )
    report["int8_unchanged"] = all(
        np.array_equal(before[n], after[n]) for n in before if before[n].dtype == np.int8 or n.endswith(".scale")
    )
    report["frameworks_loaded"] = [m for m in BLOCKED + ("tensorflow", "torch") if m in sys.modules]
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
