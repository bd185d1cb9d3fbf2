"""The `jaxlayer` command: `jaxlayer demo | info | inspect | bench`.

`demo` trains a small CNN on scikit-learn's digits with the chosen framework
and Keras backend (see `jaxlayer.demo`); `info` lists versions, optional
packages and JAX devices; `bench` runs the benchmarks of a source checkout.
Keras reads KERAS_BACKEND once per process, so `demo --backend X` re-runs
itself in a child process when the active backend differs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

FRAMEWORK_CHOICES = ("jax", "haiku", "flax", "nnx", "equinox")
BACKEND_CHOICES = ("jax", "tensorflow", "torch")
_CHILD_ENV = "JAXLAYER_DEMO_CHILD"
_RELOAD_CHECK = "_reload-check"  # hidden: used by the demo's fresh-process reload

# (label, module, distributions that may provide it, pip extra)
OPTIONAL_PACKAGES = (
    (
        "tensorflow",
        "tensorflow",
        ("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
        "tensorflow",
    ),
    ("torch", "torch", ("torch",), "torch"),
    ("dm-haiku", "haiku", ("dm-haiku",), "haiku"),
    ("flax", "flax", ("flax",), "flax"),
    ("equinox", "equinox", ("equinox",), "equinox"),
    ("scikit-learn", "sklearn", ("scikit-learn",), "demo"),
    ("matplotlib", "matplotlib", ("matplotlib",), "demo"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxlayer",
        description="JAX models as Keras 3 layers: demo, environment info, benchmarks.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{demo,info,inspect,bench}")
    commands.required = True
    demo = commands.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits, save it, reload it",
        description="Train one framework's small CNN, wrapped in its jaxlayer layer, on "
        "scikit-learn's 8x8 digits with model.fit; write model.keras, training.png and "
        "metrics.json to --out; check the saved model reloads with identical predictions "
        "in this process and in a fresh one. Exits non-zero if held-out accuracy is below "
        "--min-accuracy or a reload differs.",
    )
    demo.add_argument(
        "--framework", choices=FRAMEWORK_CHOICES, default="haiku", help="default: haiku"
    )
    demo.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="jax",
        help="Keras backend (default: jax); a different one than the active backend runs "
        "the demo in a child process with KERAS_BACKEND set",
    )
    demo.add_argument("--epochs", type=_positive_int, default=10, help="default: 10")
    demo.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    demo.add_argument("--seed", type=int, default=0, help="default: 0")
    demo.add_argument(
        "--reload-python",
        default=None,
        help="Python interpreter for the fresh-process reload check (default: this one; "
        "the model is saved portably, so an environment with only keras and jax works: "
        "`make demo` uses .venv-min)",
    )
    demo.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="train data-parallel over N local processes joined by jax.distributed "
        "(JAX backend; default: 1)",
    )
    demo.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="required held-out accuracy (default: 0.95; 0.9 with --finetune)",
    )
    demo.add_argument(
        "--finetune",
        action="store_true",
        help="the fine-tuning job instead: pretrain on digits 0-4 in pure JAX, write a "
        "checkpoint, load it into the layer by name with a new head, LoRA on all ten digits, "
        "back to pure JAX through save_checkpoint, then int8 (see docs/finetuning.md)",
    )
    commands.add_parser("info", help="versions, optional packages, Keras backend, JAX devices")
    inspect = commands.add_parser(
        "inspect",
        help="list the JaxLayers in a .keras file, or a checkpoint's arrays, without loading",
        description="Print each JaxLayer in a .keras file: portable or source-based, its "
        "jax.export platforms and jax version, its inputs, and its params/state tree "
        "(paths, shapes, dtypes, counts). Or print a checkpoint's arrays (an Orbax "
        "directory, read from its metadata, or a .msgpack, .safetensors or .npz file) and, "
        "with --against, the load_checkpoint report for each JaxLayer of a .keras file. "
        "No model is built and no user code is imported.",
    )
    inspect.add_argument("path", help="a .keras file or a checkpoint")
    inspect.add_argument(
        "--against",
        metavar="MODEL.keras",
        help="with a checkpoint: print the report load_checkpoint(strict=False) would give",
    )
    commands.add_parser(
        "bench",
        help="run the benchmarks (from a source checkout); arguments go to benchmarks/run.py",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, received {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `jaxlayer` command with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [_RELOAD_CHECK]:
        return _reload_check(argv[1:])
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "inspect":
        return _inspect(args.path, args.against)
    return _demo(args)


# ---------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    from jaxlayer.demo import MissingDependency, check_requirements, run_demo
    from jaxlayer.demo._processes import process_index

    try:
        # Before anything heavy, and before a child process: a missing package
        # is one line with the pip extra, never a traceback.
        if args.finetune:
            return _finetune(args)
        check_requirements(args.framework, args.backend)
        if args.processes > 1 and process_index() is None:
            return _demo_in_processes(args)
        import keras

        if keras.config.backend() != args.backend:
            return _demo_in_child(args, keras.config.backend())
        metrics = run_demo(
            args.framework,
            args.epochs,
            args.out,
            seed=args.seed,
            min_accuracy=0.95 if args.min_accuracy is None else args.min_accuracy,
            reload_python=args.reload_python,
            processes=args.processes,
        )
    except MissingDependency as error:
        print(f"jaxlayer demo: {error}", file=sys.stderr)
        return 2
    return 0 if metrics["passed"] else 1


def _finetune(args: argparse.Namespace) -> int:
    from jaxlayer.demo import MissingDependency
    from jaxlayer.demo._finetune import check_finetune_requirements, run_finetune

    if args.processes > 1 or args.reload_python:
        print(
            "jaxlayer demo: --finetune runs in one process and checks its result in pure JAX; "
            f"received --processes {args.processes}"
            + (f" --reload-python {args.reload_python}" if args.reload_python else "")
            + ". Drop those options, or drop --finetune.",
            file=sys.stderr,
        )
        return 2
    try:
        check_finetune_requirements(args.framework, args.backend)
        import keras

        if keras.config.backend() != args.backend:
            return _demo_in_child(args, keras.config.backend())
        minimum = 0.9 if args.min_accuracy is None else args.min_accuracy
        metrics = run_finetune(
            args.framework, args.epochs, args.out, seed=args.seed, min_accuracy=minimum
        )
    except MissingDependency as error:
        print(f"jaxlayer demo: {error}", file=sys.stderr)
        return 2
    return 0 if metrics["passed"] else 1


def _demo_command(args: argparse.Namespace) -> list[str]:
    command = [
        sys.executable, "-m", "jaxlayer.cli", "demo",
        "--framework", args.framework,
        "--backend", args.backend,
        "--epochs", str(args.epochs),
        "--out", args.out,
        "--seed", str(args.seed),
        "--processes", str(args.processes),
    ]  # fmt: skip
    if args.min_accuracy is not None:
        command += ["--min-accuracy", str(args.min_accuracy)]
    if args.finetune:
        command.append("--finetune")
    if args.reload_python:
        command += ["--reload-python", args.reload_python]
    return command


def _demo_in_processes(args: argparse.Namespace) -> int:
    from jaxlayer.demo._processes import launch

    if args.backend != "jax":
        print(
            f"jaxlayer demo: --processes runs on the JAX backend (jax.distributed); "
            f"received --backend {args.backend}. Use --backend jax or --processes 1.",
            file=sys.stderr,
        )
        return 2
    if 16 % args.processes:
        print(
            f"jaxlayer demo: --processes must divide the global batch of 16 (1, 2, 4, 8 or 16); "
            f"received {args.processes}.",
            file=sys.stderr,
        )
        return 2
    print(f"Starting {args.processes} processes (jax.distributed on 127.0.0.1); output of process 0:", flush=True)
    return launch(_demo_command(args), args.processes)


def _demo_in_child(args: argparse.Namespace, active: str) -> int:
    if os.environ.get(_CHILD_ENV):
        print(
            f"jaxlayer demo: KERAS_BACKEND={args.backend} was set for this process but Keras "
            f"started with the `{active}` backend; check ~/.keras/keras.json and KERAS_BACKEND.",
            file=sys.stderr,
        )
        return 1
    print(
        f"Keras reads KERAS_BACKEND once per process (active: {active}); running the demo "
        f"in a child process with KERAS_BACKEND={args.backend}.",
        flush=True,
    )
    command = _demo_command(args)
    env = dict(os.environ, KERAS_BACKEND=args.backend, **{_CHILD_ENV: "1"})
    return subprocess.run(command, env=env).returncode


def _inspect(path: str, against: str | None = None) -> int:
    import zipfile

    from jaxlayer._describe_checkpoint import (
        compare_checkpoint,
        describe_checkpoint,
        is_checkpoint_path,
    )
    from jaxlayer._describe_file import describe_file, format_description

    if is_checkpoint_path(path):
        try:
            print(describe_checkpoint(path) if against is None else compare_checkpoint(path, against))
        except (OSError, ValueError, ImportError, KeyError, zipfile.BadZipFile) as error:
            print(f"jaxlayer inspect: cannot read {path!r}: {error}", file=sys.stderr)
            return 2
        return 0
    if against is not None:
        print("jaxlayer inspect: --against goes with a checkpoint path, not a .keras file", file=sys.stderr)
        return 2
    try:
        description = describe_file(path)
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        print(f"jaxlayer inspect: cannot read {path!r} as a .keras file: {error}", file=sys.stderr)
        return 2
    print(format_description(description))
    return 0


def _reload_check(argv: list[str]) -> int:
    from jaxlayer.demo._reload import reload_and_compare

    model_path, data_path, framework = argv
    identical, message = reload_and_compare(model_path, data_path, framework)
    print(message)
    return 0 if identical else 1


# ---------------------------------------------------------------------- info


def _distribution_version(distributions: Sequence[str]) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _importable(module: str) -> bool:
    # find_spec locates the package without importing it (no TensorFlow/torch start-up).
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _info() -> int:
    import jax
    import keras

    import jaxlayer

    rows = [
        ("jaxlayer", jaxlayer.__version__, "yes", "required"),
        ("keras", keras.__version__, "yes", "required"),
        ("jax", jax.__version__, "yes", "required"),
        ("jaxlib", _distribution_version(("jaxlib",)) or "-", "yes", "required"),
    ]
    for label, module, distributions, extra in OPTIONAL_PACKAGES:
        version = _distribution_version(distributions) or "-"
        importable = "yes" if _importable(module) else "no"
        rows.append((label, version, importable, f'pip install "jaxlayer[{extra}]"'))
    print(f"Python {sys.version.split()[0]} ({sys.executable})")
    print(f"{'package':<14}{'version':<18}{'importable':<12}install")
    for label, version, importable, extra in rows:
        print(f"{label:<14}{version:<18}{importable:<12}{extra}")
    env_backend = os.environ.get("KERAS_BACKEND")
    source = (
        f"KERAS_BACKEND={env_backend}" if env_backend else "from ~/.keras/keras.json or the default"
    )
    print(f"Keras backend: {keras.config.backend()} ({source})")
    devices = ", ".join(f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices())
    print(f"JAX devices: {devices} (default backend: {jax.default_backend()})")
    return 0


# --------------------------------------------------------------------- bench


def _find_benchmarks() -> Path | None:
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        if (root / "benchmarks" / "run.py").is_file():
            return root
    return None


def _bench(argv: list[str]) -> int:
    root = _find_benchmarks()
    if root is None:
        print(
            "jaxlayer bench: the benchmarks are not installed with the package; run "
            "`jaxlayer bench` (or `make bench`) from a source checkout of jaxlayer."
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    run = importlib.import_module("benchmarks.run")
    result = run.main(argv)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
