"""Peak memory of a torch-backend fit step against pure JAX, on a ~50M-parameter MLP.

    python -m benchmarks.torch_memory [--width 4096] [--batch 64]

Each variant runs in a fresh process, which imports what every variant
imports (JAX, Keras on the torch backend, torch), reads its resident set
size, builds the MLP `2048-4096-4096-4096-2048-10` (50.4M float32
parameters: 192 MiB), takes two Adam steps (batch 64) and reads its peak
resident set size (VmHWM). The figure is the growth: peak minus the size
after the imports.

- `pure jax+optax`: a jitted `value_and_grad` + `optax.adam` step donating
  params and optimizer state;
- `jaxlayer`: `JaxLayer(mlp_apply, mlp_init(...))` trained by Keras's torch
  trainer through the DLPack bridge;
- `stock Keras layers`: the same MLP from `keras.layers.Dense`.

The parameters, gradients and Adam's two moments are 4 x 192 MiB in every
variant; what the bridge must not add is a second copy of the parameters
or of the activations.
"""

from __future__ import annotations

import argparse

from .timing import child_print, peak_rss_mb, run_child

VARIANTS = ("pure jax+optax", "jaxlayer", "stock Keras layers")


def sizes_for(width: int) -> list[int]:
    return [width // 2, width, width, width, width // 2, 10]


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def child(variant: str, width: int, batch: int) -> dict:
    import jax
    import keras
    import numpy as np
    import optax
    import torch  # noqa: F401 - every variant pays the same imports

    from jaxlayer import JaxLayer

    from .models import mlp_apply, mlp_init

    sizes = sizes_for(width)
    rng = np.random.default_rng(0)
    x = rng.random((2 * batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, 10, 2 * batch).astype(np.int32)
    base = current_rss_mb()
    if variant == "pure jax+optax":
        params = mlp_init(sizes)(jax.random.key(0), jax.numpy.zeros((1, sizes[0])))
        optimizer = optax.adam(1e-3)
        state = optimizer.init(params)

        def loss_fn(p, xb, yb):
            return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, xb), yb).mean()

        @jax.jit
        def step(p, s, xb, yb):
            loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
            updates, s = optimizer.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        step = jax.jit(step.__wrapped__, donate_argnums=(0, 1))
        for i in range(2):
            params, state, loss = step(
                params, state, x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
            )
        jax.block_until_ready(loss)
    else:
        if variant == "jaxlayer":
            layers = [JaxLayer(mlp_apply, mlp_init(sizes))]
        else:
            layers = [keras.layers.Dense(n, activation="relu") for n in sizes[1:-1]]
            layers.append(keras.layers.Dense(sizes[-1]))
        model = keras.Sequential([keras.Input((sizes[0],)), *layers])
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    params_mb = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])) * 4 / 2**20
    return {"after_imports_mb": base, "peak_rss_mb": peak_rss_mb(), "params_mb": params_mb}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    cli = parser.parse_args(argv)
    if cli.child:
        child_print(child(cli.child, cli.width, cli.batch))
        return
    rows = {}
    for variant in VARIANTS:
        args = ["--child", variant, "--width", str(cli.width), "--batch", str(cli.batch)]
        rows[variant] = run_child("torch_memory", args, env={"KERAS_BACKEND": "torch"}, timeout=600)
    params_mb = next((r["params_mb"] for r in rows.values() if "params_mb" in r), float("nan"))
    print(
        f"MLP {sizes_for(cli.width)}: parameters {params_mb:.0f} MiB, batch {cli.batch}, 2 Adam steps"
    )
    print(
        "| variant (torch backend for Keras) | peak RSS | growth after imports | growth / parameters |"
    )
    print("|---|---|---|---|")
    for variant, r in rows.items():
        if "peak_rss_mb" not in r:
            print(f"| {variant} | {r.get('error', 'failed')[:120]} | | |")
            continue
        growth = r["peak_rss_mb"] - r["after_imports_mb"]
        print(
            f"| {variant} | {r['peak_rss_mb']:.0f} MiB | {growth:.0f} MiB | {growth / params_mb:.2f}x |"
        )


if __name__ == "__main__":
    main()
