"""Workload 7: portable `.keras` files (jax.export programs) vs the source form.

- size: a 50M-parameter MLP (W/2-W-W-W-W/2, W=4096) saved portably, against
  its float32 weights (target <= 1.05x);
- save / load time of that model, portable vs source (registered functions);
  each portable save re-exports (the layer's export cache is cleared), so the
  time includes tracing and lowering (targets 2x and 1.5x). Loading a file
  with assets costs Keras a full extraction of the archive (weights included)
  to a temporary folder, which is most of the portable form's extra load time;
- `predict`, eager `layer(x)` and the `fit` step of a loaded portable model vs
  the same model loaded from its source form (targets 1.1x), MLP
  784-512-512-10, on the jax backend here and on tensorflow and torch in
  child processes (Keras reads KERAS_BACKEND once).

Run as a module, it is the child for one backend.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .timing import Row, Stats, child_print, run_child

SIZE_TARGET = 1.05
SAVE_TARGET = 2.0
LOAD_TARGET = 1.5
CALL_TARGET = 1.1
SMALL = [784, 512, 512, 10]


def _registered_apply():
    import keras

    from benchmarks.models import mlp_apply

    @keras.saving.register_keras_serializable(package="jaxlayer_bench")
    def bench_mlp_apply(params, inputs):
        return mlp_apply(params, inputs)

    return bench_mlp_apply


def _models(sizes: list[int], seed: int = 0):
    """(source model, portable model) with the same weights."""
    import jax
    import keras

    from benchmarks.models import mlp_apply, mlp_init
    from jaxlayer import JaxLayer

    params = mlp_init(sizes)(jax.random.key(seed), jax.numpy.ones((1, sizes[0])))
    source = JaxLayer(_registered_apply(), params=params, save_as="source")
    portable = JaxLayer(lambda params, inputs: mlp_apply(params, inputs), params=params)
    del params
    return [keras.Sequential([keras.Input((sizes[0],)), layer]) for layer in (source, portable)]


def _saved_pair(sizes: list[int], folder: Path):
    import keras

    paths = []
    for name, model in zip(("source", "portable"), _models(sizes)):
        path = folder / f"{name}.keras"
        model.save(path)
        paths.append(path)
    return [keras.models.load_model(p) for p in paths]


def child(backend: str, steps: int, rounds: int, batch: int, calls: int) -> dict:
    assert os.environ.get("KERAS_BACKEND") == backend
    import keras

    from benchmarks.bench_fit import make_data
    from benchmarks.timing import interleaved

    with tempfile.TemporaryDirectory() as tmp:
        source, portable = _saved_pair(SMALL, Path(tmp))
    x, y = make_data("mlp", steps, batch)
    for model in (source, portable):
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def fit(model):
        return lambda: model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)

    def predict(model):
        return lambda: model.predict(x, batch_size=batch, verbose=0)

    sample = keras.ops.convert_to_tensor(x[:32])

    def eager(model):
        layer = model.layers[0]
        return lambda: layer(sample)

    out = {}
    for name, make, n in (("fit", fit, 1), ("predict", predict, 1), ("eager", eager, calls)):
        stats = interleaved({"source": make(source), "portable": make(portable)}, rounds, n, warmup=1)
        out[name] = {k: v.samples for k, v in stats.items()}
    out["steps"] = steps
    return out


def _size_and_save_rows(args) -> list[Row]:
    import keras

    width = args.build_width
    sizes = [width // 2, width, width, width, width // 2]
    rows = []
    source, portable = _models(sizes)
    n_params = sum(int(np.prod(w.shape)) for w in portable.weights)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save = {"source": [], "portable": []}
        load = {"source": [], "portable": []}
        for _ in range(max(2, args.rounds // 2)):
            for name, model in (("source", source), ("portable", portable)):
                model.layers[0]._set_untracked("_export_cache", None)  # a first save each time
                start = time.perf_counter()
                model.save(tmp / f"{name}.keras")
                save[name].append(time.perf_counter() - start)
            for name in ("source", "portable"):
                start = time.perf_counter()
                loaded = keras.models.load_model(tmp / f"{name}.keras")
                load[name].append(time.perf_counter() - start)
                del loaded
                gc.collect()  # 200 MB per loaded model: free it before the next load
        size = (tmp / "portable.keras").stat().st_size
        programs = size - (tmp / "source.keras").stat().st_size
    weights_mb = n_params * 4 / 2**20
    rows.append(
        Row("portable", f"file size, {n_params / 1e6:.0f}M params", size / 2**20, "f32 weights",
            size / (n_params * 4), SIZE_TARGET, unit="MiB",
            note=f"weights {weights_mb:.0f} MiB; programs and config {programs / 1024:.0f} KiB more than source")
    )
    for label, times, target in (("save", save, SAVE_TARGET), ("load_model", load, LOAD_TARGET)):
        a, b = Stats(times["portable"]), Stats(times["source"])
        rows.append(Row("portable", f"{label}, {n_params / 1e6:.0f}M params", a.median, f"source {label}",
                        a.median / b.median, target, unit="s", spread=(a.low, a.high)))
    return rows


def run(args) -> list[Row]:
    rows = _size_and_save_rows(args)
    for backend in ("jax", "tensorflow", "torch"):
        result = run_child(
            "bench_portable",
            ["--backend", backend, "--steps", str(args.fit_steps), "--rounds", str(args.rounds),
             "--batch", str(args.batch), "--calls", str(args.eager_calls)],
            env={"KERAS_BACKEND": backend},
            timeout=900,
        )
        if "error" in result:
            rows.append(Row("portable", f"{backend}: loaded model", None, note=result["error"][:200]))
            continue
        for name in ("fit", "predict", "eager"):
            per = 1 / result["steps"] if name == "fit" else 1.0
            portable = Stats([s * per for s in result[name]["portable"]])
            source = Stats([s * per for s in result[name]["source"]])
            what = {"fit": "fit step", "predict": "predict epoch", "eager": "eager layer(x)"}[name]
            rows.append(Row("portable", f"{backend}: {what}, loaded portable", portable.median,
                            "loaded source", portable.median / source.median, CALL_TARGET,
                            spread=(portable.low, portable.high),
                            ratio_min=portable.low / source.low))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--calls", type=int, default=100)
    a = parser.parse_args()
    child_print(child(a.backend, a.steps, a.rounds, a.batch, a.calls))


if __name__ == "__main__":
    main()
