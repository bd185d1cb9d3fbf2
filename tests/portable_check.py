"""Run in a fresh process: loads portable `.keras` files without the models' code.

Usage: python portable_check.py MANIFEST.json. The manifest lists, per model,
the file, the data and the predictions the saving process made. The
frameworks (haiku, flax, equinox) and the tests' model modules cannot be
imported here. Prints one JSON line of results per model.
"""

from __future__ import annotations

import importlib.abc
import json
import sys

BLOCKED = ("haiku", "flax", "equinox", "optax", "portable_models", "models", "saving_models")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: a portable model must load without it")
        return None


sys.meta_path.insert(0, _Blocker())

import keras  # noqa: E402
import numpy as np  # noqa: E402

import jaxlayer  # noqa: E402, F401 - registers the layer classes


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def check(entry: dict) -> dict:
    result: dict = {"name": entry["name"]}
    model = keras.models.load_model(entry["path"])
    layer = model.layers[0]
    result["class"] = type(layer).__name__
    result["portable"] = isinstance(layer, jaxlayer.PortableLayer)
    x = np.load(entry["x"])
    y = np.load(entry["y"])
    expected = np.load(entry["expected"])
    predicted = numpy(model.predict(x, verbose=0, batch_size=len(x)))
    result["max_diff"] = float(np.abs(predicted - expected).max())
    result["identical"] = bool(np.array_equal(predicted, expected))
    # Any batch size, eagerly and through predict.
    one = numpy(model(x[:1]))
    seven = numpy(model.predict(x[:7], verbose=0, batch_size=7))
    result["batch_sizes_ok"] = bool(
        one.shape == (1,) + expected.shape[1:]
        and np.allclose(one, expected[:1], atol=1e-5)
        and np.allclose(seven, expected[:7], atol=1e-5)
    )
    result["weight_names"] = sorted(v.name for v in model.weights)
    result["state_leaves"] = len(jaxlayer_leaves(layer.get_state()))
    if keras.config.backend() != "numpy":
        first = numpy(layer(x[:8], training=True))
        second = numpy(layer(x[:8], training=True))
        result["training_calls_differ"] = bool(not np.array_equal(first, second))
        state_before = [np.asarray(s) for s in jaxlayer_leaves(layer.get_state())]
        weights_before = [numpy(v) for v in layer.trainable_weights]
        model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, epochs=8, batch_size=16, verbose=0, shuffle=False)
        losses = history.history["loss"]
        result["losses"] = losses
        result["loss_fell"] = bool(losses[-1] < losses[0])
        result["weights_changed"] = bool(
            any(not np.allclose(a, numpy(v)) for a, v in zip(weights_before, layer.trainable_weights))
        )
        state_after = [np.asarray(s) for s in jaxlayer_leaves(layer.get_state())]
        result["state_changed"] = [
            str(a.dtype) for a, b in zip(state_before, state_after) if not np.array_equal(a, b)
        ]
    # set_params with the stored layout changes the outputs; restoring restores them.
    import jax

    before = numpy(model(x))
    current = layer.get_params()
    halved = jax.tree.map(lambda p: p * 0.5 if np.issubdtype(p.dtype, np.floating) else p, current)
    layer.set_params(halved)
    result["set_params_changes_outputs"] = bool(not np.allclose(numpy(model(x)), before))
    layer.set_params(current)
    result["set_params_restores"] = bool(np.array_equal(numpy(model(x)), before))
    # A loaded portable model saves again and loads with the same outputs.
    again = entry["path"].replace(".keras", ".again.keras")
    model.save(again)
    reloaded = keras.models.load_model(again)
    result["resave_identical"] = bool(np.array_equal(numpy(reloaded(x)), numpy(model(x))))
    return result


def jaxlayer_leaves(tree):
    import jax

    return [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype")]


def main(manifest_path: str) -> None:
    with open(manifest_path) as file:
        manifest = json.load(file)
    for entry in manifest:
        print(json.dumps(check(entry)), flush=True)
    loaded_frameworks = [m for m in ("haiku", "flax", "equinox", "tensorflow", "torch") if m in sys.modules]
    print(json.dumps({"modules": loaded_frameworks}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
