"""GPU figures: fit steps, host copies of the torch bridge, portable files.

    python -m benchmarks.gpu --out DIR [--portable FILE.keras --reference FILE.npz]

Run on a machine with one CUDA GPU (it also runs on CPU, to check it). Each
of the jax and torch backends runs in its own process (Keras reads
KERAS_BACKEND once), and each child writes its JSON (`gpu_<backend>.json`) to DIR after each part, so a run stopped early keeps what it measured:

- **fit steps** of the benchmark models, timed interleaved in one process
  against a hand-written `jax.jit` + optax Adam step and the same model
  from stock Keras layers: the MLP and CNN of workload 1 (batch 128) and
  `hk.nets.ResNet18` and the Flax transformer of workload 8 (batch 32);
- **host copies** (torch child): CUDA memcpy events that torch's profiler
  (CUPTI, which sees JAX's copies in the same process too) records while
  the layer runs forward and backward, and the bridge's DLPack conversions
  per call;
- **portable** (both children, with `--portable`): a `.keras` file saved
  with `save_as="portable"` on a CPU-only machine is loaded, predicts on
  the GPU from its `cuda` program (compared with the CPU reference outputs
  in `--reference`), and takes two `fit` steps;
- **LoRA** (jax child, `--lora`): workload 10's fit steps, full fine-tuning
  against LoRA r8.

`make_portable_fixture(folder)` writes the portable file and its reference
on the CPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .timing import child_print, run_child

BACKENDS = ("jax", "torch")
FIT_MODELS = ("mlp", "cnn")
ARCHITECTURES = ("resnet18", "transformer")


def fit_steps(backend: str, steps: int, rounds: int) -> dict:
    """Per-step seconds of each model's variants: {model: {variant: [samples]}}."""
    from . import bench_architectures as arch
    from . import bench_fit as fit
    from .models import VERSIONS
    from .timing import interleaved

    out: dict[str, Any] = {}
    for model in (*FIT_MODELS, *ARCHITECTURES):
        started = time.perf_counter()
        if model in FIT_MODELS:
            batch = 128
            x, y = fit.make_data(model, steps, batch)
            version = VERSIONS["plain"](model)
            variants = {
                "pure jax+optax": fit.pure_epoch(version.apply, version.params, x, y, batch),
                "jaxlayer": fit.keras_epoch(version.make_ours(), x, y, batch),
                "stock Keras layers": fit.keras_epoch(fit.stock_keras(model), x, y, batch),
            }
        else:
            import keras

            batch = 32
            x, y = arch.make_data(model, steps, batch)
            setup = arch.Setup(model, x[:batch])
            ours = keras.Sequential(
                [keras.Input(x.shape[1:], dtype=x.dtype.name), setup.make_layer()]
            )
            stock = (
                arch.stock_keras_resnet18 if model == "resnet18" else arch.stock_keras_transformer
            )
            variants = {
                "pure jax+optax": arch.pure_epoch(setup, x, y, batch),
                "jaxlayer": arch.keras_epoch(ours, x, y, batch),
                "stock Keras layers": arch.keras_epoch(stock(), x, y, batch),
            }
        stats = interleaved(variants, rounds=rounds, calls=1, warmup=1)
        out[model] = {
            "batch": batch,
            "step_s": {k: [s / steps for s in v.samples] for k, v in stats.items()},
            "wall_s": time.perf_counter() - started,
        }
    return out


def host_copies(calls: int = 3) -> dict:
    """Memcpy events and DLPack conversions while the torch layer trains (torch child)."""
    import keras
    import torch
    from torch.profiler import ProfilerActivity, profile

    from jaxlayer._backends import torch as bridge

    from . import bench_architectures as arch

    x_np, y_np = arch.make_data("resnet18", 1, 32)
    setup = arch.Setup("resnet18", x_np)
    model = keras.Sequential([keras.Input(x_np.shape[1:]), setup.make_layer()])
    device = model.weights[0].value.device
    x = torch.as_tensor(x_np, device=device)
    y = torch.as_tensor(y_np, device=device, dtype=torch.int64)

    def step():
        logits = model(x, training=True)
        torch.nn.functional.cross_entropy(logits, y).backward()

    counts = {"to_jax": 0, "to_torch": 0}
    to_jax, to_torch = bridge._tensor_to_jax, bridge._jax_to_tensor

    def counting_to_jax(tensor):
        counts["to_jax"] += 1
        return to_jax(tensor)

    def counting_to_torch(array):
        counts["to_torch"] += 1
        return to_torch(array)

    step()
    step()
    torch.cuda.synchronize() if device.type == "cuda" else None
    bridge._tensor_to_jax, bridge._jax_to_tensor = counting_to_jax, counting_to_torch
    try:
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for _ in range(calls):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
    finally:
        bridge._tensor_to_jax, bridge._jax_to_tensor = to_jax, to_torch
    memcpy: dict[str, int] = {}
    for event in prof.events():
        name = event.name
        if "memcpy" in name.lower():
            memcpy[name] = memcpy.get(name, 0) + 1
    # The bytes of each copy are in the trace's event arguments only.
    copied: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as trace:
            events = json.load(trace).get("traceEvents", [])
    for event in events:
        name = str(event.get("name", ""))
        if name.startswith("Memcpy") and "bytes" in event.get("args", {}):
            copied.setdefault(name, []).append(int(event["args"]["bytes"]))
    return {
        "device": str(device),
        "calls": calls,
        "memcpy_events": memcpy,
        "memcpy_bytes": {k: sorted(v)[-10:] for k, v in copied.items()},
        "dlpack_per_call": {k: v / calls for k, v in counts.items()},
        "params": len(model.trainable_weights),
        "state": len(model.non_trainable_weights),
    }


def portable_check(path: str, reference: str) -> dict:
    """Loads a portable `.keras` saved on CPU, predicts and trains where this runs."""
    import keras

    import jaxlayer  # noqa: F401 - registers the layer classes the file names

    saved = np.load(reference)
    model = keras.models.load_model(path)
    started = time.perf_counter()
    out = np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(saved["x"])))
    predict_s = time.perf_counter() - started
    diff = np.abs(out - saved["y"])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.trainable_weights]
    history = model.fit(saved["x"], saved["labels"], batch_size=16, epochs=1, verbose=0)
    moved = sum(
        not np.array_equal(a, keras.ops.convert_to_numpy(v.value))
        for a, v in zip(before, model.trainable_weights)
    )
    return {
        "variable_device": str(getattr(model.weights[0].value, "device", "?")),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / np.abs(saved["y"]).max()),
        "argmax_agreement": float(np.mean(out.argmax(-1) == saved["y"].argmax(-1))),
        "first_predict_s": predict_s,
        "fit_loss": float(history.history["loss"][-1]),
        "trainable_moved": f"{moved}/{len(before)}",
    }


def make_portable_fixture(folder: str) -> None:
    """On a CPU-only machine: the ResNet18 saved portable, with inputs and outputs."""
    import keras

    from . import bench_architectures as arch

    x, labels = arch.make_data("resnet18", 1, 32, seed=3)
    setup = arch.Setup("resnet18", x)
    from jaxlayer import HaikuLayer

    layer = HaikuLayer(
        arch.resnet18_transformed(), params=setup.params, state=setup.state, save_as="portable"
    )
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    # hk.nets.ResNet18 starts with zero logits weights: a few steps make the
    # outputs (and the BatchNorm statistics) worth comparing.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    # Saved without the optimizer (a fresh layer over the trained values).
    trained = HaikuLayer(
        arch.resnet18_transformed(),
        params=layer.get_params(),
        state=layer.get_state(),
        save_as="portable",
    )
    model = keras.Sequential([keras.Input(x.shape[1:]), trained])
    Path(folder).mkdir(parents=True, exist_ok=True)
    model.save(os.path.join(folder, "resnet18_portable.keras"))
    y = np.asarray(model.predict_on_batch(x))
    np.savez(os.path.join(folder, "resnet18_reference.npz"), x=x, y=y, labels=labels)


def child(backend: str, cli: argparse.Namespace) -> None:
    import jax

    out_file = Path(cli.out) / f"gpu_{backend}.json"
    parts: dict[str, Any] = {}

    def write(part: str, value: Any) -> None:
        parts[part] = value
        out_file.write_text(json.dumps(parts, indent=1))
        print(f"[{backend} {part}] {json.dumps(value)[:1500]}", flush=True)

    import keras

    versions = {"jax": jax.__version__, "keras": keras.__version__}
    if backend == "torch":
        import torch

        versions["torch"] = torch.__version__
    write("devices", {"jax": [str(d) for d in jax.devices()], "versions": versions})
    if cli.portable:
        write("portable", _guarded(portable_check, cli.portable, cli.reference))
    if backend == "torch":
        write("host_copies", _guarded(host_copies))
    write("fit", _guarded(fit_steps, backend, cli.steps, cli.rounds))
    if backend == "jax" and cli.lora:
        from . import bench_lora

        write(
            "lora", _guarded(bench_lora.child_steps, bench_lora.FULL, cli.steps, cli.rounds, False)
        )
    child_print({"backend": backend, "done": True})


def _guarded(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as error:  # noqa: BLE001 - reported, the other parts still run
        import traceback

        return {
            "error": f"{type(error).__name__}: {str(error)[:1000]}",
            "trace": traceback.format_exc()[-2000:],
        }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=BACKENDS)
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--portable", default=None)
    parser.add_argument("--reference", default=None)
    parser.add_argument("--make-fixture", metavar="FOLDER", default=None)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per child")
    cli = parser.parse_args(argv)
    if cli.make_fixture:
        make_portable_fixture(cli.make_fixture)
        return
    if cli.child:
        child(cli.child, cli)
        return
    Path(cli.out).mkdir(parents=True, exist_ok=True)
    forwarded = ["--out", cli.out, "--steps", str(cli.steps), "--rounds", str(cli.rounds)]
    if cli.portable:
        forwarded += ["--portable", cli.portable, "--reference", cli.reference]
    if cli.lora:
        forwarded.append("--lora")
    for backend in cli.backends:
        # torch and JAX share the GPU: JAX must not take most of it up front.
        env = {"KERAS_BACKEND": backend, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        result = run_child("gpu", ["--child", backend, *forwarded], env=env, timeout=cli.timeout)
        print(f"[{backend} child] {str(result)[:300]}", flush=True)


if __name__ == "__main__":
    main()
