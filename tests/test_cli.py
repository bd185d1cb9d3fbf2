"""The `jaxlayer` command: `info`, `demo` (files, reload checks, exit codes,
missing-package hints, backend switch) and `bench`.

The command picks its Keras backend itself (a child process per backend), so
this file runs once, in the jax test process; the demo runs in subprocesses.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import keras
import numpy as np
import pytest

from conftest import BACKEND

if BACKEND != "jax":
    pytest.skip(
        "the jaxlayer command chooses its backend per child process; these tests run "
        "once, in the KERAS_BACKEND=jax test process",
        allow_module_level=True,
    )

from jaxlayer import cli  # noqa: E402

MISSING_DEMO_PACKAGES = [
    name for name in ("haiku", "sklearn", "matplotlib") if importlib.util.find_spec(name) is None
]
needs_demo_packages = pytest.mark.skipif(
    bool(MISSING_DEMO_PACKAGES),
    reason=f"the demo needs {', '.join(MISSING_DEMO_PACKAGES)} (pip install 'jaxlayer[demo]')",
)


def run_python(code: str, *args: str, backend: str = "jax", timeout: int = 600):
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(*args: str, backend: str = "jax", timeout: int = 600):
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.run(
        [sys.executable, "-m", "jaxlayer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------- info


def _info_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("yes", "no"):
            rows[parts[0]] = parts[1:]
    return rows


def test_info_lists_versions_importability_backend_and_devices(capsys):
    import jax

    assert cli.main(["info"]) == 0
    output = capsys.readouterr().out
    rows = _info_rows(output)
    assert rows["keras"][0] == keras.__version__
    assert rows["jax"][0] == jax.__version__
    assert rows["jaxlib"][0] == importlib.metadata.version("jaxlib")
    for label, module, _, extra in cli.OPTIONAL_PACKAGES:
        expected = "yes" if importlib.util.find_spec(module) is not None else "no"
        assert rows[label][1] == expected, (label, rows[label])
        assert f'pip install "jaxlayer[{extra}]"' in " ".join(rows[label])
    assert "Keras backend: jax" in output
    assert f"JAX devices: {jax.devices()[0].platform}:0" in output


def test_info_imports_no_optional_framework_and_reports_a_missing_one():
    # `sys.modules[name] = None` makes a package unimportable, as if not installed.
    result = run_python(
        """
        import sys
        sys.modules["haiku"] = None
        from jaxlayer.cli import main
        assert main(["info"]) == 0
        heavy = sorted({"tensorflow", "torch", "flax", "equinox"} & set(sys.modules))
        print("IMPORTED", heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    rows = _info_rows(result.stdout)
    assert rows["dm-haiku"][1] == "no"
    assert "IMPORTED []" in result.stdout


# ---------------------------------------------------------------------- demo


def _held_out():
    from jaxlayer.demo._data import load_digits

    return load_digits(seed=0)


@pytest.mark.slow
@needs_demo_packages
def test_demo_jax_trains_writes_files_and_reloads_identically(tmp_path):
    out = tmp_path / "out"
    # make test points JAXLAYER_MIN_PYTHON at .venv-min (keras + jax only), as make demo does.
    python = os.environ.get("JAXLAYER_MIN_PYTHON") or sys.executable
    result = run_cli("demo", "--framework", "jax", "--epochs", "2", "--min-accuracy", "0.5",
                     "--out", str(out), "--reload-python", python)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "reload, same process       predictions identical" in result.stdout
    assert f"reload, fresh process      predictions identical (KERAS_BACKEND=jax, {python})" in result.stdout
    assert "PASSED" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["framework"] == "jax" and metrics["backend"] == "jax"
    assert metrics["passed"] is True
    assert metrics["reload"] == {"portable": True, "same_process_identical": True,
                                 "fresh_process_identical": True, "fresh_process_python": python}
    assert "layer `jax_cnn` (JaxLayer): portable" in run_cli("inspect", str(out / "model.keras")).stdout
    assert metrics["parameters"] == {"trainable": 104_930, "non_trainable": 0}
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(metrics["history"][key]) == 2
    assert metrics["history"]["loss"][1] < metrics["history"]["loss"][0]
    assert len(metrics["epoch_seconds"]) == 2
    assert 0.5 <= metrics["test_accuracy"] <= 1.0

    png = (out / "training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # The saved file is a working model: it reproduces the reported accuracy here.
    from jaxlayer.demo.models import jax_cnn

    jax_cnn.register()
    model = keras.models.load_model(out / "model.keras")
    data = _held_out()
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)

    # The reload check notices a difference (so "identical" above means something).
    from jaxlayer.demo._reload import predict, reload_and_compare

    expected = predict(model, data.x_test)
    np.savez(tmp_path / "same.npz", inputs=data.x_test, expected=expected)
    assert reload_and_compare(out / "model.keras", tmp_path / "same.npz", "jax") == (
        True,
        "predictions identical",
    )
    np.savez(tmp_path / "off.npz", inputs=data.x_test, expected=expected + 1e-4)
    identical, message = reload_and_compare(out / "model.keras", tmp_path / "off.npz", "jax")
    assert not identical and "predictions differ" in message


@pytest.mark.slow
@needs_demo_packages
def test_demo_haiku_below_required_accuracy_exits_nonzero_but_writes_everything(tmp_path):
    out = tmp_path / "out"
    result = run_cli("demo", "--epochs", "1", "--min-accuracy", "1.0", "--out", str(out))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "BELOW the required 1.00" in result.stdout and "FAILED" in result.stdout
    assert f"reload, fresh process      predictions identical (KERAS_BACKEND=jax, {sys.executable})" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["framework"] == "haiku" and metrics["passed"] is False
    assert metrics["test_accuracy"] < 1.0
    assert metrics["reload"]["same_process_identical"] and metrics["reload"]["fresh_process_identical"]
    assert (out / "training.png").stat().st_size > 10_000
    assert (out / "model.keras").stat().st_size > 100_000  # ~105k float32 weights


@pytest.mark.parametrize(
    "blocked, framework, distribution, extra",
    [
        ("haiku", "haiku", "dm-haiku", "demo"),
        ("flax", "nnx", "flax", "flax"),
        ("equinox", "equinox", "equinox", "equinox"),
        ("sklearn", "jax", "scikit-learn", "demo"),
    ],
)
def test_demo_missing_package_is_one_line_naming_the_extra(
    tmp_path, blocked, framework, distribution, extra
):
    out = tmp_path / "out"
    result = run_python(
        f"""
        import sys
        sys.modules[{blocked!r}] = None
        from jaxlayer.cli import main
        sys.exit(main(["demo", "--framework", {framework!r}, "--out", sys.argv[1]]))
        """,
        str(out),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    # Ignore library start-up chatter (absl/oneDNN) other packages may print.
    ours = [line for line in lines if line.startswith("jaxlayer demo:")]
    assert len(ours) == 1, result.stderr
    assert f'pip install "jaxlayer[{extra}]"' in ours[0] and distribution in ours[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing was trained or written


def test_demo_backend_flag_runs_a_child_process_with_keras_backend(monkeypatch, tmp_path):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (pip install 'jaxlayer[torch]')")
    calls = []

    def fake_run(command, env):
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 7)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    monkeypatch.delenv("JAXLAYER_DEMO_CHILD", raising=False)
    code = cli.main(["demo", "--framework", "jax", "--backend", "torch", "--epochs", "3",
                     "--out", str(tmp_path)])  # fmt: skip
    assert code == 7  # the child's exit code
    ((command, env),) = calls
    assert command[:4] == [sys.executable, "-m", "jaxlayer.cli", "demo"]
    assert env["KERAS_BACKEND"] == "torch"
    flags = dict(zip(command[4::2], command[5::2]))
    assert flags["--backend"] == "torch" and flags["--epochs"] == "3"
    assert flags["--framework"] == "jax" and flags["--out"] == str(tmp_path)


def test_demo_rejects_a_bad_epochs_value(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--epochs", "0"])
    assert exit_info.value.code == 2
    assert "--epochs: must be at least 1, received 0" in capsys.readouterr().err


# --------------------------------------------------------------------- bench


def test_bench_outside_a_checkout_prints_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_find_benchmarks", lambda: None)
    assert cli.main(["bench"]) == 2
    output = capsys.readouterr().out.strip().splitlines()
    assert len(output) == 1 and "source checkout" in output[0]


def test_bench_runs_benchmarks_run_main_with_the_arguments(monkeypatch, tmp_path):
    (tmp_path / "benchmarks").mkdir()
    # A regular package, so it wins over the real checkout's `benchmarks`.
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    (tmp_path / "benchmarks" / "run.py").write_text(
        "RECEIVED = []\ndef main(argv):\n    RECEIVED.append(list(argv))\n    return 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("benchmarks", "benchmarks.run"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert cli.main(["bench", "--quick", "eager"]) == 3
    assert sys.modules["benchmarks.run"].RECEIVED == [["--quick", "eager"]]
    for name in ("benchmarks", "benchmarks.run"):
        sys.modules.pop(name, None)


def test_inspect_lists_portable_and_source_layers_without_building(tmp_path, capsys):
    import jax.numpy as jnp

    from jaxlayer import JaxLayer

    params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}, "steps": jnp.zeros((), "int32")}
    layer = JaxLayer(lambda params, inputs: inputs @ params["dense"]["kernel"], params=params, name="body")
    model = keras.Sequential([keras.Input((4,)), layer])
    model.save(tmp_path / "m.keras")
    assert cli.main(["inspect", str(tmp_path / "m.keras")]) == 0
    out = capsys.readouterr().out
    assert "layer `body` (JaxLayer): portable" in out
    assert "6 jax.export programs" in out and "platforms: cpu, cuda" in out
    assert f"saved with jax {jax.__version__}" in out and ": readable" in out
    assert "inputs: float32[?, 4]" in out and "outputs (inference): float32[?, 3]" in out
    assert "params: 3 arrays, 16 values" in out
    assert "dense.kernel  float32[4, 3]" in out and "steps         int32[]" in out
    assert "`import jaxlayer` first" in out


def test_inspect_source_form_and_a_bad_file(tmp_path, capsys):
    sys.path.insert(0, os.path.dirname(__file__))
    from jaxlayer import JaxLayer
    from saving_models import saved_call, saved_init

    model = keras.Sequential([keras.Input((4,)), JaxLayer(saved_call, saved_init, name="body")])
    model.save(tmp_path / "s.keras")
    assert cli.main(["inspect", str(tmp_path / "s.keras")]) == 0
    out = capsys.readouterr().out
    assert "layer `body` (JaxLayer): source" in out and "jaxlayer_tests>saved_call" in out
    assert "params: 4 arrays" in out
    (tmp_path / "bad.keras").write_text("not a zip")
    assert cli.main(["inspect", str(tmp_path / "bad.keras")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
@needs_demo_packages
def test_demo_over_two_processes_trains_data_parallel(tmp_path):
    out = tmp_path / "out"
    result = run_cli("demo", "--framework", "jax", "--processes", "2", "--epochs", "2",
                     "--min-accuracy", "0.5", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "processes                  2, data-parallel" in result.stdout
    # The 2 processes' accuracy equals the saved file's on one device, and
    # the file reloads identically in a fresh process.
    assert "reload, same process       held-out accuracy" in result.stdout
    assert "on one device equals the 2 processes'" in result.stdout
    assert "reload, fresh process      predictions identical" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["batch_size"] == 16
    assert metrics["data"]["held_out"] == 360  # both processes' shards together
    assert metrics["history"]["loss"][1] < metrics["history"]["loss"][0]
    model = keras.models.load_model(out / "model.keras")
    data = _held_out()
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--processes", "3"], "--processes must divide the global batch of 16"),
        (["--processes", "2", "--backend", "torch"], "--processes runs on the JAX backend"),
    ],
)
@needs_demo_packages
def test_demo_processes_rejects_what_it_cannot_run(args, message):
    result = run_cli("demo", "--framework", "jax", *args)
    assert result.returncode == 2
    assert message in result.stderr
