"""Workload 9: load a Flax checkpoint (Orbax) into a built layer, against Orbax's own restore.

A Flax MLP of width W (six W x W Dense layers: W=4096 is 100M parameters,
400 MB) is initialised and saved with `ocp.StandardCheckpointer` once. Then,
each in a fresh process:

- `orbax restore`: `StandardCheckpointer().restore(path, abstract_tree)`
  into `jax.ShapeDtypeStruct`s of the model's variables (the floor);
- `load_checkpoint (<backend>)`: a built `FlaxLayer` on that Keras backend
  (jax, tensorflow, torch) loads the checkpoint.

Each child reports the time of the restore/load alone and the peak RSS it
adds above the built model (the kernel's peak-RSS counter is reset after
the build, `/proc/self/clear_refs`), compared with the checkpoint's size.
The jax child also times `save_checkpoint` against Orbax's `save` of the
same tree. Run as a module with `--child` it is the child.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from .timing import Row, Stats, child_print, peak_rss_mb, run_child

TIME_TARGET = 1.3
RSS_TARGET = 1.3  # peak RSS above the built model, / checkpoint bytes
LAYERS = 6


def _module(width: int):
    import flax.linen as nn

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(LAYERS):
                x = nn.Dense(width, name=f"dense_{i}")(x)
                x = nn.relu(x) if i < LAYERS - 1 else x
            return x

    return Mlp()


def _reset_peak_rss() -> float:
    """Resets the kernel's peak-RSS counter to the current RSS; returns it (MiB)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    return peak_rss_mb()


def _save(path: str, width: int) -> dict:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    variables = _module(width).init(jax.random.key(0), np.ones((1, width), "float32"))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, variables)
    checkpointer.wait_until_finished()
    leaves = jax.tree.leaves(variables)
    return {"params": sum(int(x.size) for x in leaves), "bytes": sum(int(x.nbytes) for x in leaves)}


def child(variant: str, path: str, width: int) -> dict:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    module = _module(width)
    x = np.ones((2, width), "float32")
    if variant == "orbax":
        abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
        base = _reset_peak_rss()
        start = time.perf_counter()
        restored = ocp.StandardCheckpointer().restore(path, abstract)
        jax.block_until_ready(restored)
        return {"load_s": time.perf_counter() - start, "added_mb": peak_rss_mb() - base}
    from jaxlayer import FlaxLayer  # orbax is imported above, before the RSS baseline

    layer = FlaxLayer(module)
    layer(x)  # build: init_fn allocates the model once
    base = _reset_peak_rss()
    start = time.perf_counter()
    report = layer.load_checkpoint(path)
    jax.block_until_ready([v.value for v in layer.weights] if variant == "jax" else [])
    result = {"load_s": time.perf_counter() - start, "added_mb": peak_rss_mb() - base, "loaded": len(report.loaded)}
    if variant == "jax":
        out = tempfile.mkdtemp()
        try:
            start = time.perf_counter()
            layer.save_checkpoint(os.path.join(out, "ours"))
            result["save_s"] = time.perf_counter() - start
            tree = {"params": layer.get_params()["params"]}
            checkpointer = ocp.StandardCheckpointer()
            start = time.perf_counter()
            checkpointer.save(os.path.join(out, "orbax"), tree)
            checkpointer.wait_until_finished()
            result["orbax_save_s"] = time.perf_counter() - start
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return result


def run(args) -> list[Row]:
    width = 1024 if args.quick else 4096
    repeats = 1 if args.quick else 3
    variants = ("orbax", "jax") if args.quick else ("orbax", "jax", "tensorflow", "torch")
    root = tempfile.mkdtemp()
    path = os.path.join(root, "ckpt")
    try:
        info = run_child("bench_checkpoint", ["--save", path, "--width", str(width)])
        if "error" in info:
            return [Row("checkpoint", "save", None, note=info["error"])]
        results: dict[str, list[dict]] = {v: [] for v in variants}
        errors: dict[str, str] = {}
        for repeat in range(repeats):
            order = variants if repeat % 2 == 0 else tuple(reversed(variants))
            for variant in order:
                backend = "jax" if variant == "orbax" else variant
                out = run_child(
                    "bench_checkpoint",
                    ["--child", variant, "--path", path, "--width", str(width)],
                    env={"KERAS_BACKEND": backend},
                )
                if "error" in out:
                    errors[variant] = out["error"]
                else:
                    results[variant].append(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mb = info["bytes"] / 2**20
    workload = f"checkpoint {info['params'] / 1e6:.0f}M params ({mb:.0f} MiB), Orbax"
    base = results["orbax"]
    if not base:
        return [Row(workload, "orbax restore", None, note=errors.get("orbax", "failed"))]
    base_time = Stats([r["load_s"] for r in base])
    rows = [
        Row(workload, "orbax restore: time", base_time.median, unit="s",
            note=f"adds {Stats([r['added_mb'] for r in base]).median:.0f} MiB peak RSS"),
    ]
    for variant in variants[1:]:
        runs = results[variant]
        if not runs:
            rows.append(Row(workload, f"load_checkpoint ({variant})", None, note=errors.get(variant, "no result")))
            continue
        load = Stats([r["load_s"] for r in runs])
        added = Stats([r["added_mb"] for r in runs])
        is_jax = variant == "jax"
        # Targets hold at full size; in quick mode (24 MiB) Orbax's fixed
        # buffers (~50 MiB, its own restore too) dominate the RSS figure.
        rss_target = RSS_TARGET if is_jax and not args.quick else None
        rows.append(
            Row(workload, f"load_checkpoint ({variant}): time", load.median, "orbax restore",
                load.median / base_time.median, TIME_TARGET if is_jax else None, unit="s",
                spread=(load.low, load.high))
        )
        rows.append(
            Row(workload, f"load_checkpoint ({variant}): peak RSS added", added.median,
                "checkpoint size", added.median / mb, rss_target, unit="MiB")
        )
        if is_jax:
            save = Stats([r["save_s"] for r in runs])
            orbax_save = Stats([r["orbax_save_s"] for r in runs])
            rows.append(
                Row(workload, "save_checkpoint (jax): time", save.median, "orbax save",
                    save.median / orbax_save.median, unit="s")
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--save")
    parser.add_argument("--path")
    parser.add_argument("--width", type=int, default=4096)
    cli = parser.parse_args()
    if cli.save:
        child_print(_save(cli.save, cli.width))
    else:
        child_print(child(cli.child, cli.path, cli.width))
