"""Workload 5: the `fit` step on the tensorflow and torch backends vs the jax backend.

Each backend runs in its own process (Keras reads KERAS_BACKEND once), the
MLP 784-512-512-10 with batch 128. The torch child also times a forward +
backward through the layer against `jax.vjp` of the jitted function called
directly, interleaved in that process. Run as a module, it is the child.
"""

from __future__ import annotations

import argparse
import os

from .timing import Row, Stats, child_print, run_child

FIT_TARGET = 1.5
VJP_TARGET = 1.5
BACKENDS = ("jax", "tensorflow", "torch")


def child(backend: str, steps: int, rounds: int, batch: int) -> dict:
    assert os.environ.get("KERAS_BACKEND") == backend
    import jax

    from benchmarks.bench_fit import keras_epoch, make_data
    from benchmarks.models import mlp_apply, mlp_init
    from benchmarks.timing import interleaved

    try:
        from jaxlayer import JaxLayer

        init_fn = mlp_init([784, 512, 512, 10])
        layer = JaxLayer(mlp_apply, init_fn)
    except Exception as error:  # noqa: BLE001 - the missing bridge is the result
        return {"unavailable": f"{type(error).__name__}: {str(error).splitlines()[0][:150]}"}
    from benchmarks.bench_fit import stock_keras

    x, y = make_data("mlp", steps, batch)
    epochs = {
        "fit": keras_epoch(layer, x, y, batch),
        "stock": keras_epoch(stock_keras("mlp"), x, y, batch),
    }
    stats = interleaved(epochs, rounds=rounds, calls=1, warmup=1)
    out = {f"{k}_step_s": [s / steps for s in v.samples] for k, v in stats.items()}
    if backend == "torch":
        import torch

        xt = torch.from_numpy(x[:batch])
        params = layer.get_params()
        jitted = jax.jit(mlp_apply)
        xj = jax.numpy.asarray(x[:batch])

        def torch_fwd_bwd():
            for variable in layer.trainable_weights:
                variable.value.grad = None
            loss = layer(xt).sum()
            loss.backward()
            return None

        def jax_vjp():
            out, pullback = jax.vjp(jitted, params, xj)
            return pullback(jax.numpy.ones_like(out))

        stats = interleaved(
            {"torch": torch_fwd_bwd, "vjp": jax_vjp}, rounds=rounds, calls=10, warmup=2
        )
        out["torch_fwd_bwd_s"] = stats["torch"].samples
        out["jax_vjp_s"] = stats["vjp"].samples
    return out


def run(args) -> list[Row]:
    results = {}
    for backend in BACKENDS:
        results[backend] = run_child(
            "bench_backends",
            [
                "--child",
                backend,
                "--steps",
                str(args.fit_steps),
                "--rounds",
                str(args.rounds),
                "--batch",
                str(args.batch),
            ],
            env={"KERAS_BACKEND": backend},
        )
    rows = []
    workload = "fit step mlp, per backend"
    jax_result = results["jax"]
    if "fit_step_s" not in jax_result:
        note = jax_result.get("error") or jax_result.get("unavailable", "")
        return [Row(workload, "jax backend", None, note=note)]
    base = Stats(jax_result["fit_step_s"])
    stock = Stats(jax_result["stock_step_s"]).median
    rows.append(
        Row(
            workload,
            "jax backend",
            base.median,
            spread=(base.low, base.high),
            note=f"ours/stock Keras layers on jax={base.median / stock:.2f}x",
        )
    )
    for backend in BACKENDS[1:]:
        out = results[backend]
        if "fit_step_s" not in out:
            why = out.get("unavailable") or out.get("error", "")
            rows.append(Row(workload, f"{backend} backend", None, note=f"not measured: {why}"))
            continue
        s = Stats(out["fit_step_s"])
        stock = Stats(out["stock_step_s"]).median
        rows.append(
            Row(
                workload,
                f"{backend} backend",
                s.median,
                "jax backend",
                s.median / base.median,
                FIT_TARGET,
                spread=(s.low, s.high),
                note=f"separate processes; ours/stock Keras layers on {backend}="
                f"{s.median / stock:.2f}x",
            )
        )
        if backend == "torch":
            t, v = Stats(out["torch_fwd_bwd_s"]), Stats(out["jax_vjp_s"])
            w = "torch fwd+bwd mlp b128"
            rows.append(Row(w, "jax.vjp (jitted fn)", v.median, spread=(v.low, v.high)))
            rows.append(
                Row(
                    w,
                    "jaxlayer on torch",
                    t.median,
                    "jax.vjp",
                    t.median / v.median,
                    VJP_TARGET,
                    spread=(t.low, t.high),
                )
            )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=BACKENDS, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)
    child_print(child(args.child, args.steps, args.rounds, args.batch))


if __name__ == "__main__":
    main()
