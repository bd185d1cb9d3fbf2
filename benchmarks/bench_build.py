"""Workload 4: construct + build a large MLP with `init_fn`, each variant in a fresh process.

Variants: a pure `init_fn` call (JAX only), the same with Keras imported
first, `jaxlayer.JaxLayer(...).build(...)`, and `keras.layers.JaxLayer`.
Each child reports the import time, the build time (construct + build,
waiting for the arrays), its peak RSS, and whether TensorFlow got imported.
Run as a module (`python -m benchmarks.bench_build --child VARIANT`) it is
the child.
"""

from __future__ import annotations

import argparse
import sys
import time

from .timing import Row, Stats, child_print, peak_rss_mb, run_child

TARGET = 1.2
VARIANTS = (
    "pure init_fn",
    "pure init_fn +keras",
    "jaxlayer",
    "keras.layers.JaxLayer",
    "jaxlayer, no release",
)


def sizes_for(width: int) -> list[int]:
    # width 4096: 2048-4096-4096-4096-2048, about 50M parameters.
    return [width // 2, width, width, width, width // 2]


def child(variant: str, width: int, init: str = "normal") -> dict:
    start = time.perf_counter()
    import jax

    if variant != "pure init_fn":
        import keras  # noqa: F401

        if variant.startswith("jaxlayer"):
            from jaxlayer import JaxLayer
        if variant == "jaxlayer, no release":
            # Before the fix: every init_fn output stays alive until the end
            # of the build, beside its variable's copy.
            import jaxlayer._layer

            jaxlayer._layer._released_one_by_one = lambda leaves: iter(list(leaves))
    from benchmarks.models import mlp_init

    sizes = sizes_for(width)
    init_fn = mlp_init(sizes)
    if init == "ones":
        # No random-number temporaries: the peak is the parameters themselves.
        def init_fn(inputs):
            return [
                {"w": jax.numpy.ones((a, b)), "b": jax.numpy.zeros(b)}
                for a, b in zip(sizes[:-1], sizes[1:])
            ]

    def call_fn(params, inputs):  # never called: only the build is measured
        return inputs

    rss_imported = peak_rss_mb()
    imported = time.perf_counter()
    if variant.startswith("pure"):
        sample = jax.numpy.ones((1, sizes[0]), "float32")
        params = init_fn(sample) if init == "ones" else init_fn(jax.random.key(0), sample)
    else:
        if variant.startswith("jaxlayer"):
            layer = JaxLayer(call_fn, init_fn)
        else:
            import keras

            layer = keras.layers.JaxLayer(call_fn, init_fn)
        layer.build((None, sizes[0]))
        params = [v.value for v in layer.weights]
    jax.block_until_ready(params)
    built = time.perf_counter()
    count = sum(int(leaf.size) for leaf in jax.tree.leaves(params))
    return {
        "import_s": imported - start,
        "build_s": built - imported,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_imported,
        "params": count,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def run(args) -> list[Row]:
    width = args.build_width
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    errors: dict[str, str] = {}
    # Quick mode skips keras.layers.JaxLayer (its TensorFlow import alone takes seconds).
    variants = VARIANTS[:3] if args.quick else VARIANTS
    for repeat in range(args.build_repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for variant in order:
            out = run_child(
                "bench_build",
                ["--child", variant, "--width", str(width), "--init", args.build_init],
            )
            if "error" in out:
                errors[variant] = out["error"]
            else:
                results[variant].append(out)
    rows: list[Row] = []
    base = results["pure init_fn"]
    if not base:
        return [Row("build", "pure init_fn", None, note=errors.get("pure init_fn", "failed"))]
    n_params = base[0]["params"]
    workload = f"build {n_params / 1e6:.0f}M params ({args.build_init})"
    base_time = Stats([r["build_s"] for r in base])
    base_rss = Stats([r["peak_rss_mb"] for r in base])
    for variant in variants:
        runs = results[variant]
        if not runs:
            rows.append(Row(workload, variant, None, note=errors.get(variant, "no result")))
            continue
        build = Stats([r["build_s"] for r in runs])
        rss = Stats([r["peak_rss_mb"] for r in runs])
        delta = Stats([r["peak_rss_mb"] - r["rss_after_imports_mb"] for r in runs])
        imports = Stats([r["import_s"] for r in runs])
        tf = any(r["tensorflow_imported"] for r in runs)
        target = TARGET if variant == "jaxlayer" else None
        note = f"imports {imports.median:.2f}s; TF imported: {'yes' if tf else 'no'}"
        rss_note = f"build adds {delta.median:.0f} MiB"
        keras_base = results.get("pure init_fn +keras")
        if variant == "jaxlayer" and keras_base:
            # The fair floor for any Keras layer: the same call with Keras imported.
            t = build.median / Stats([r["build_s"] for r in keras_base]).median
            m = rss.median / Stats([r["peak_rss_mb"] for r in keras_base]).median
            note += f"; vs pure+keras {t:.2f}x"
            rss_note += f"; vs pure+keras {m:.2f}x"
        rows.append(
            Row(
                workload,
                f"{variant}: time",
                build.median,
                "pure" if variant != "pure init_fn" else "",
                None if variant == "pure init_fn" else build.median / base_time.median,
                target,
                "ms",
                (build.low, build.high),
                note,
            )
        )
        rows.append(
            Row(
                workload,
                f"{variant}: peak RSS",
                rss.median,
                "pure" if variant != "pure init_fn" else "",
                None if variant == "pure init_fn" else rss.median / base_rss.median,
                target,
                "MiB",
                (rss.low, rss.high),
                rss_note,
            )
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=VARIANTS, required=True)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--init", choices=("normal", "ones"), default="normal")
    args = parser.parse_args(argv)
    child_print(child(args.child, args.width, args.init))


if __name__ == "__main__":
    main()
