"""Training across processes with `jax.distributed` under `keras.distribution`.

`tests/distribution_scripts/train_multiprocess.py` runs every scenario twice:
as 2 processes x 2 virtual CPU devices joined by `jax.distributed` (gloo
collectives, coordinator on 127.0.0.1 at a free port), and as 1 process
holding 4 devices. Both see the same global batches, so the trained weights,
gathered across processes with `jaxlayer.to_host`, must agree. The scenarios:

- `dp_mlp_init_fn`: DataParallel; plain functions built by `init_fn` (random
  init under the distribution), with dropout `rng` and a running-mean state;
  each process feeds its slice of every global batch.
- `mp_mlp_params`: ModelParallel (mesh 2x2, "model" axis inside each process)
  built from host `params=` / `state=`.
- `dp_flax_bn_tf_data`: DataParallel; a Flax Linen BatchNorm + Dropout model,
  fed a global `tf.data` pipeline that Keras shards per process.
- `mp_flax_bn_arrays`: the same model under ModelParallel.
- `mp_cross_*`: ModelParallel whose "model" axis spans the two processes (each
  variable split between them), for plain functions and the Haiku, NNX and
  Equinox adapters; every process feeds the whole global batch.

In each, after `fit`: `set_params` of a full host tree on every process keeps
the layouts; `evaluate`; `save_weights` and `model.save` (process 0 writes
the file), loaded back by every process and here, in one process.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKEND

if BACKEND != "jax":
    pytest.skip(
        "jax.distributed with keras.distribution runs on the JAX backend only; "
        f"this process runs KERAS_BACKEND={BACKEND}",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "distribution_scripts" / "train_multiprocess.py"
SCENARIOS = [
    "dp_mlp_init_fn",
    "mp_mlp_params",
    "dp_flax_bn_tf_data",
    "mp_flax_bn_arrays",
    "mp_cross_mlp_init_fn",
    "mp_cross_haiku",
    "mp_cross_nnx",
    "mp_cross_equinox",
]
TIMEOUT = 420  # seconds per launch; each takes about 1-2 minutes here


def _script_module():
    spec = importlib.util.spec_from_file_location("train_multiprocess", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def reports(tmp_root: str) -> tuple[dict, dict]:
    """The reports of the 2-process and the 1-process runs (run once)."""
    from jaxlayer.demo._local_processes import run_local_processes

    out = {}
    for processes in (2, 1):
        out_dir = Path(tmp_root) / f"processes-{processes}"
        out_dir.mkdir(parents=True, exist_ok=True)
        results = run_local_processes(
            [sys.executable, str(SCRIPT), str(out_dir), *SCENARIOS],
            num_processes=processes,
            devices_per_process=4 // processes,
            timeout=TIMEOUT,
        )
        for result in results:
            if result.returncode != 0:
                pytest.fail(
                    f"{SCRIPT.name}, process {result.process_id} of {processes}, "
                    f"exit {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
                )
        out[processes] = json.loads((out_dir / f"report-{processes}.json").read_text())
    return out[2], out[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return reports(str(tmp_path_factory.mktemp("multiprocess")))


def assert_weights_close(actual: dict, expected: dict, rtol=1e-5, atol=1e-6):
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(
            np.asarray(actual[name]), np.asarray(expected[name]), rtol=rtol, atol=atol, err_msg=name
        )


def test_both_runs_had_the_devices_they_claim(runs):
    multi, single = runs
    assert (multi["processes"], multi["devices"]) == (2, 4)
    assert (single["processes"], single["devices"]) == (1, 4)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_processes_train_like_one(runs, scenario):
    multi, single = (r["scenarios"][scenario] for r in runs)
    assert_weights_close(multi["initial"], single["initial"], rtol=0, atol=0)
    assert_weights_close(multi["final"], single["final"])
    moved = [
        name
        for name in multi["final"]
        if np.abs(np.asarray(multi["final"][name]) - np.asarray(multi["initial"][name])).max() > 1e-3
    ]
    assert len(moved) >= len(multi["final"]) - 1, f"only {moved} moved"  # one may be a step counter
    np.testing.assert_allclose(multi["evaluate"], single["evaluate"], rtol=1e-5)
    if "mlp/running.steps" in multi["final"]:
        # State is written back once per global step: 2 epochs x 2 batches.
        assert multi["final"]["mlp/running.steps"] == 4


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_layouts_follow_the_layout_map(runs, scenario):
    multi, single = (r["scenarios"][scenario] for r in runs)
    assert multi["shardings"] == single["shardings"]
    strategy, model = _script_module().SCENARIOS[scenario][:2]
    split = {name: spec for name, spec in multi["shardings"].items() if "model" in spec}
    if strategy == "data":
        assert not split
    else:
        # The two kernels named by the LayoutMap, and nothing else.
        assert len(split) == 2, multi["shardings"]
        assert len(_script_module().LAYOUTS[model]) == 2


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_set_params_get_params_and_reloads_across_processes(runs, scenario):
    multi = runs[0]["scenarios"][scenario]
    # set_params with the full host tree on every process: values and layouts kept.
    assert multi["set_params_equal"] and multi["layouts_kept"] and multi["restored"]
    # get_params returns global jax.Arrays (to_host gathers them).
    assert multi["get_params_global"]
    # Every process loaded process 0's files back under the distribution.
    assert multi["load_weights_equal"] and multi["load_model_equal"]
    assert multi["load_model_shardings"] == multi["shardings"]


@pytest.mark.parametrize("scenario", ["dp_mlp_init_fn", "mp_flax_bn_arrays", "mp_cross_haiku"])
def test_files_saved_by_two_processes_load_in_one(runs, scenario):
    import keras

    multi = runs[0]["scenarios"][scenario]
    final = multi["final"]
    loaded = keras.saving.load_model(multi["files"]["keras"])
    layer = loaded.layers[0]
    values = {"/".join(v.path.split("/")[-2:]): np.asarray(v.value) for v in layer.weights}
    assert_weights_close(values, final, rtol=0, atol=0)

    script = _script_module()
    model_name = script.SCENARIOS[scenario][1]
    keras.utils.set_random_seed(1)
    fresh = keras.Sequential([keras.Input((script.FEATURES,)), script.make_layer(model_name, "init_fn")])
    fresh.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    fresh.optimizer.build(fresh.trainable_variables)  # so its saved state loads too
    fresh.load_weights(multi["files"]["weights"])
    values = {"/".join(v.path.split("/")[-2:]): np.asarray(v.value) for v in fresh.layers[0].weights}
    assert_weights_close(values, final, rtol=0, atol=0)
    assert int(fresh.optimizer.iterations.numpy()) == 4  # the optimizer state came along
