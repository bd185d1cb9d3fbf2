"""Runs the benchmark workloads, prints one table and writes `results.json`.

    python -m benchmarks.run [--quick] [--only NAME ...] [--out DIR]

`jaxlayer bench` calls `main(argv)` from a source checkout. Every ratio is a
ratio of medians of interleaved rounds measured by the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

WORKLOADS = (
    "fit",
    "eager",
    "predict",
    "build",
    "backends",
    "scaling",
    "portable",
    "architectures",
    "checkpoint",
    "lora",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few rounds: under a minute"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=WORKLOADS,
        metavar="NAME",
        help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--out", default="benchmarks/out", help="folder for results.json and scaling.png"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a row misses its target (for CI and regressions)",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per variant (default 7, quick 3)"
    )
    parser.add_argument("--batch", type=int, default=128, help="training batch size (default 128)")
    parser.add_argument(
        "--fit-steps", type=int, default=None, help="fit steps per round (default 20, quick 10)"
    )
    parser.add_argument(
        "--eager-calls",
        type=int,
        default=None,
        help="calls per round, eager/predict (default 100, quick 30)",
    )
    parser.add_argument(
        "--predict-batch", type=int, default=32, help="predict_on_batch batch size (default 32)"
    )
    parser.add_argument(
        "--build-width",
        type=int,
        default=None,
        help="build model width W: W/2-W-W-W-W/2 (default 4096 = 50M params, quick 1024)",
    )
    parser.add_argument(
        "--build-repeats",
        type=int,
        default=None,
        help="fresh processes per build variant (default 3, quick 1)",
    )
    parser.add_argument(
        "--build-init",
        choices=("normal", "ones"),
        default="normal",
        help="build init_fn: random normal (default) or ones (no RNG temporaries)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    if args.rounds is None:
        args.rounds = 3 if quick else 7
    if args.fit_steps is None:
        args.fit_steps = 10 if quick else 20
    if args.eager_calls is None:
        args.eager_calls = 30 if quick else 100
    if args.build_width is None:
        args.build_width = 1024 if quick else 4096
    if args.build_repeats is None:
        args.build_repeats = 1 if quick else 2
    return args


def machine() -> dict:
    import jax
    import keras

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "keras": keras.__version__,
        "keras_backend": keras.config.backend(),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    repo = str(Path(__file__).resolve().parent.parent)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    import keras

    if keras.config.backend() != "jax":
        print(
            f"benchmarks run on the jax backend; KERAS_BACKEND is {keras.config.backend()}",
            file=sys.stderr,
        )
        return 2
    from benchmarks.timing import Row, format_table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    durations = {}
    # Quick mode leaves out the other backends (each child imports TF or torch).
    per_backend = ("backends", "architectures", "lora")
    default = [w for w in WORKLOADS if w not in per_backend] if args.quick else WORKLOADS
    for name in args.only or default:
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        try:
            rows += module.run(args)
        except Exception as error:  # noqa: BLE001 - one failing workload must not hide the rest
            rows.append(Row(name, "-", None, note=f"failed: {type(error).__name__}: {error}"[:200]))
        durations[name] = time.perf_counter() - start
        print(f"[{name}: {durations[name]:.1f} s]", file=sys.stderr, flush=True)
    table = format_table(rows)
    print(table)
    result = {
        "quick": args.quick,
        "args": vars(args),
        "machine": machine(),
        "durations_s": durations,
        "rows": [row.to_dict() for row in rows],
        "table": table,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out / 'results.json'}")
    missed = [f"{row.workload}: {row.variant}" for row in rows if row.ok is False]
    failed = [f"{row.workload}: {row.variant}" for row in rows if row.value is None and row.note]
    if args.check and (missed or failed):
        print(f"\n--check: {len(missed)} missed target(s), {len(failed)} failed row(s):", file=sys.stderr)
        for line in missed + failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    # Without --check, missed targets are reported in the table only.
    return 0


if __name__ == "__main__":
    sys.exit(main())
