"""JaxLayer under `keras.distribution` (DataParallel, ModelParallel) on 8 devices.

Each scenario runs `tests/distribution_scripts/train_distributed.py` in a
subprocess with 8 virtual CPU devices (JAX fixes its device count when it
starts, so the pytest process cannot provide them) and asserts on the JSON
report it prints: the variables' shardings, the shardings `call_fn` receives
inside `fit`, and the trained weights against a single-device run of the same
steps in the same process.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKEND

if BACKEND != "jax":
    pytest.skip(
        "keras.distribution (DataParallel / ModelParallel) is implemented for the "
        f"JAX backend only; this process runs KERAS_BACKEND={BACKEND}",
        allow_module_level=True,
    )

# Also run with KERAS_NNX_ENABLED=true (the subprocess inherits the variable).
pytestmark = [pytest.mark.slow, pytest.mark.nnx_mode]

SCRIPT = Path(__file__).parent / "distribution_scripts" / "train_distributed.py"
NUM_DEVICES = 8
PARAM_NAMES = ["dense.bias", "dense.kernel", "out.bias", "out.kernel"]
STATE_NAMES = ["running.mean", "running.steps"]


@functools.cache
def run_scenario(scenario: str) -> dict:
    """Runs the script once per scenario (cached for the whole module)."""
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    result = subprocess.run(
        [sys.executable, str(SCRIPT), scenario],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("JSON:")]
    if result.returncode != 0 or not lines:
        pytest.fail(
            f"{SCRIPT.name} {scenario} failed (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return json.loads(lines[-1][len("JSON:") :])


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_trees_close(a[key], b[key], rtol, atol)
        else:
            np.testing.assert_allclose(
                np.asarray(a[key]), np.asarray(b[key]), rtol=rtol, atol=atol, err_msg=key
            )


def max_change(final, initial) -> float:
    return max(
        float(np.abs(np.asarray(final[g][k]) - np.asarray(initial[g][k])).max())
        for g in initial
        for k in initial[g]
    )


# ---------------------------------------------------------------- DataParallel


def test_data_parallel_runs_on_eight_devices():
    report = run_scenario("data_parallel")
    assert report["num_devices"] == NUM_DEVICES


def test_data_parallel_variables_are_replicated_on_every_device():
    run = run_scenario("data_parallel")["distributed"]["params"]
    assert sorted(run["created"]) == sorted(PARAM_NAMES + STATE_NAMES)
    for stage in ("created", "after_fit"):
        for name, sharding in run[stage].items():
            assert sharding["mesh"] == {"batch": NUM_DEVICES}, (stage, name)
            assert sharding["devices"] == NUM_DEVICES, (stage, name)
            assert sharding["replicated"], (stage, name, sharding)
            assert all(axis is None for axis in sharding["spec"]), (stage, name, sharding)


def test_data_parallel_call_fn_sees_batch_sharded_inputs_and_replicated_params():
    seen = run_scenario("data_parallel")["distributed"]["params"]["seen_in_fit"]
    inputs = seen["inputs"]
    assert inputs, "call_fn was never traced inside fit"
    for sharding in inputs:
        assert sharding["spec"] == ["batch", None]
        assert sharding["devices"] == NUM_DEVICES and not sharding["replicated"]
    for name in PARAM_NAMES + ["running.mean"]:
        assert seen[name] and all(s["replicated"] for s in seen[name]), (name, seen[name])


def test_data_parallel_fit_trains_and_matches_a_single_device_run():
    report = run_scenario("data_parallel")
    distributed = report["distributed"]["params"]
    single = report["single_device"]
    # The single-device run really was on one device, the other on eight.
    assert all(s["devices"] == 1 for s in single["created"].values())
    assert max_change(distributed["final"], report["initial"]) > 1e-2  # it trained
    assert distributed["losses"][-1] < distributed["losses"][0]
    assert_trees_close(distributed["final"], single["final"])
    assert_trees_close(distributed["final_state"], single["final_state"])
    np.testing.assert_allclose(distributed["losses"], single["losses"], rtol=1e-5)
    # 2 epochs of 32 samples in batches of 16: the state was written back 4 times.
    assert distributed["final_state"]["running"]["steps"] == 4
    assert distributed["state_dtypes"] == {"running.mean": "float32", "running.steps": "int32"}


# --------------------------------------------------------------- ModelParallel

# What `train_distributed.py` asks for in its LayoutMap (regexes over the
# variable paths); variables no key matches are replicated.
REQUESTED = {
    "dense.kernel": [None, "model"],
    "dense.bias": ["model"],
    "out.kernel": ["model", None],
    "out.bias": [None],
    "running.mean": ["model"],
    "running.steps": [],
}
MESH = {"batch": 2, "model": 4}


@pytest.mark.parametrize("build_from", ["init_fn", "params"])
def test_model_parallel_layout_map_regexes_address_variable_paths(build_from):
    run = run_scenario("model_parallel")["distributed"][build_from]
    # Our variables are named after their PyTree paths, which is what lets a
    # LayoutMap regex such as `.*dense.*kernel` pick one parameter.
    # (`sequential/model_layer/...` when built inside the model, `model_layer/...`
    # when `params=` created the variables in the constructor.)
    names = sorted(PARAM_NAMES + STATE_NAMES)
    assert [path.split("model_layer/")[-1] for path in run["paths"]] == names
    assert all(path.endswith(f"model_layer/{n}") for path, n in zip(run["paths"], names))
    for stage in ("created", "after_fit"):
        got = {name: s["spec"] for name, s in run[stage].items()}
        assert got == REQUESTED, stage
        for name, sharding in run[stage].items():
            assert sharding["mesh"] == MESH, (stage, name)
            assert sharding["devices"] == NUM_DEVICES, (stage, name)
            assert sharding["replicated"] == all(a is None for a in REQUESTED[name])


def test_model_parallel_call_fn_receives_sharded_params():
    seen = run_scenario("model_parallel")["distributed"]["init_fn"]["seen_in_fit"]
    for name in PARAM_NAMES + ["running.mean"]:
        assert seen[name], f"call_fn never saw {name} inside fit"
        for sharding in seen[name]:
            assert sharding["spec"] == REQUESTED[name], name
            assert sharding["mesh"] == MESH
    assert not seen["dense.kernel"][0]["replicated"]
    assert all(s["spec"] == ["batch", None] for s in seen["inputs"])


def test_model_parallel_get_params_keeps_the_sharding():
    got = run_scenario("model_parallel")["distributed"]["init_fn"]["get_params"]
    assert {name: s["spec"] for name, s in got.items()} == {
        name: REQUESTED[name] for name in PARAM_NAMES
    }


@pytest.mark.parametrize("build_from", ["init_fn", "params"])
def test_model_parallel_fit_trains_and_matches_the_unsharded_run(build_from):
    report = run_scenario("model_parallel")
    sharded = report["distributed"][build_from]
    single = report["single_device"]
    assert max_change(sharded["final"], report["initial"]) > 1e-2
    assert_trees_close(sharded["final"], single["final"])
    assert_trees_close(sharded["final_state"], single["final_state"])
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)
    assert sharded["final_state"]["running"]["steps"] == 4


# -------------------------------------------------------------------- adapters

# Per adapter: the sharding spec each variable must get from the LayoutMap in
# `train_distributed.py` (regexes over each framework's own parameter names).
ADAPTER_EXPECTED = {
    "flax_linen": {
        "params.Dense_0.kernel": [None, "model"],
        "params.Dense_0.bias": ["model"],
        "params.Dense_1.kernel": ["model", None],
        "params.Dense_1.bias": [None],
    },
    "nnx": {
        "hidden.kernel": [None, "model"],
        "hidden.bias": ["model"],
        "out.kernel": ["model", None],
        "out.bias": [None],
    },
    "haiku": {
        "mlp.linear_0.w": [None, "model"],
        "mlp.linear_0.b": ["model"],
        "mlp.linear_1.w": ["model", None],
        "mlp.linear_1.b": [None],
    },
    "equinox": {
        "layers.0.weight": ["model", None],
        "layers.0.bias": ["model"],
        "layers.1.weight": [None, "model"],
        "layers.1.bias": [None],
    },
}


def adapter_report(name: str) -> dict:
    report = run_scenario("adapters")["adapters"]
    if name not in report:
        pytest.skip(f"the framework behind the {name} adapter is not installed")
    return report[name]


@pytest.mark.parametrize("adapter", sorted(ADAPTER_EXPECTED))
def test_adapter_variables_get_the_layouts_their_names_ask_for(adapter):
    run = adapter_report(adapter)["distributed"]
    for stage in ("created", "after_set_params", "after_fit"):
        got = {name: s["spec"] for name, s in run[stage].items()}
        assert got == ADAPTER_EXPECTED[adapter], stage
        assert all(s["mesh"] == MESH for s in run[stage].values())


@pytest.mark.parametrize("adapter", sorted(ADAPTER_EXPECTED))
def test_adapter_model_parallel_fit_matches_the_unsharded_run(adapter):
    report = adapter_report(adapter)
    sharded, single = report["distributed"], report["single_device"]
    assert all(s["devices"] == 1 for s in single["created"].values())
    assert set(sharded["final"]) == set(ADAPTER_EXPECTED[adapter])
    for name in sharded["final"]:
        trained = np.asarray(sharded["final"][name])
        assert np.abs(trained - np.asarray(report["initial"][name])).max() > 1e-3, name
        np.testing.assert_allclose(
            trained, np.asarray(single["final"][name]), rtol=1e-5, atol=1e-6, err_msg=name
        )
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)
