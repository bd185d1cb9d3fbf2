"""Workload 6: how the fit-step ratio to pure JAX moves with MLP width and depth.

Width: 784-W-W-10 for W in 256..4096. Depth: 784 followed by D hidden layers
of 256, then 10. Each point interleaves `model.fit` epochs with the
hand-written optax loop. Memory is the bytes each keeps between steps
(parameters + optimizer state, + Keras's step counters): CPU JAX has no
per-device peak-memory counter, so peak RSS is measured in the build workload.
A flat ratio means the layer adds a constant, not a cost per parameter.
"""

from __future__ import annotations

from pathlib import Path

from .bench_fit import keras_epoch, make_data, pure_epoch
from .models import mlp_apply, mlp_init
from .timing import Row, interleaved, stats_row


def _state_bytes(pure, ours) -> tuple[int, int]:
    """Bytes of arrays each variant keeps between steps (params + optimizer state)."""
    import jax

    pure_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(pure.carry))
    model = ours.model
    variables = list(model.variables) + list(model.optimizer.variables)
    return pure_bytes, sum(v.value.nbytes for v in variables)


def point(sizes: list[int], args, x, y):
    import jax

    from jaxlayer import JaxLayer

    init_fn = mlp_init(sizes)
    params = init_fn(jax.random.key(0), jax.numpy.asarray(x[:2]))
    pure = pure_epoch(mlp_apply, params, x, y, args.batch)
    ours = keras_epoch(JaxLayer(mlp_apply, init_fn), x, y, args.batch)
    steps = len(x) // args.batch
    stats = interleaved({"pure": pure, "jaxlayer": ours}, rounds=args.rounds, calls=1, warmup=1)
    per_step = {k: type(v)([s / steps for s in v.samples]) for k, v in stats.items()}
    pure_bytes, ours_bytes = _state_bytes(pure, ours)
    return per_step, pure_bytes, ours_bytes


def run(args) -> list[Row]:
    widths = [256, 512] if args.quick else [256, 512, 1024, 2048, 4096]
    depths = [2, 4] if args.quick else [2, 4, 8, 16, 32]
    steps = args.fit_steps
    x, y = make_data("mlp", steps, args.batch)
    rows: list[Row] = []
    series = {"width": [], "depth": []}
    for kind, values in (("width", widths), ("depth", depths)):
        for value in values:
            sizes = [784, value, value, 10] if kind == "width" else [784] + [256] * value + [10]
            per_step, pure_bytes, ours_bytes = point(sizes, args, x, y)
            ratio = per_step["jaxlayer"].median / per_step["pure"].median
            mem_ratio = ours_bytes / pure_bytes if pure_bytes else None
            series[kind].append((value, ratio, mem_ratio))
            row = stats_row(
                f"scaling {kind}={value}",
                "jaxlayer fit step",
                per_step["jaxlayer"],
                per_step["pure"],
                "pure",
            )
            row.note = (
                f"pure {per_step['pure'].median * 1e3:.2f} ms; state MiB ours/pure "
                f"{ours_bytes / 2**20:.1f}/{pure_bytes / 2**20:.1f}"
            )
            rows.append(row)
    _plot(series, Path(args.out) / "scaling.png", rows)
    return rows


def _plot(series, path: Path, rows: list[Row]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        rows.append(Row("scaling plot", "-", None, note=f"matplotlib not installed ({error})"))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, label in (
        (axes[0], "width", "hidden width (784-W-W-10)"),
        (axes[1], "depth", "hidden layers of 256"),
    ):
        pts = series[kind]
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], "o-", label="fit step time ratio")
        ax.plot(xs, [p[2] for p in pts], "s--", label="state memory ratio")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(1.05, color="red", lw=0.8, ls=":", label="1.05x target")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("jaxlayer / pure JAX")
        ax.legend(fontsize=8)
    fig.suptitle("jaxlayer fit step vs hand-written jax.jit + optax (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
