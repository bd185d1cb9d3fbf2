"""`jaxlayer demo --processes N`: the demo trained data-parallel over N local processes.

The parent starts N copies of the demo command as one `jax.distributed` job
on 127.0.0.1 (see `jaxlayer.demo._local_processes`) and streams process 0's
output. Each copy calls `keras.distribution.initialize()`, trains under
`DataParallel` over the N processes' CPU devices, and feeds only its own
shard of the data: every global batch holds `batch_size / N` examples from
each process.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

TIMEOUT_SECONDS = 900


def process_index() -> int | None:
    """This process's index when it runs as part of a multi-process demo."""
    value = os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID")
    return None if value is None else int(value)


def launch(command: list[str], processes: int) -> int:
    """Runs `command` as `processes` local processes; returns 0 when all pass."""
    from jaxlayer.demo._local_processes import run_local_processes

    results = run_local_processes(
        command, processes, devices_per_process=1, timeout=TIMEOUT_SECONDS, echo_first=True
    )
    failed = [r for r in results if r.returncode != 0]
    for result in failed:
        if result.process_id == 0:
            continue  # its output was streamed
        tail = "\n    ".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        print(
            f"jaxlayer demo: process {result.process_id} of {processes} failed "
            f"(exit code {result.returncode}):\n    {tail}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def start(processes: int) -> int:
    """Joins the job and sets `DataParallel` over all processes' devices; returns this process's index."""
    import keras

    keras.distribution.initialize()
    import jax

    if jax.process_count() != processes:
        raise RuntimeError(
            f"expected {processes} processes in the jax.distributed job, found {jax.process_count()}"
        )
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    distribution.auto_shard_dataset = False  # each process passes its own shard
    keras.distribution.set_distribution(distribution)
    return jax.process_index()


def shard(array: np.ndarray, index: int, processes: int) -> np.ndarray:
    """Every `processes`-th example from `index`, all shards the same length.

    Equal lengths give every process the same number of steps, so no process
    waits in a collective for a batch another process never sends.
    """
    return union_of_shards(array, processes)[index::processes]


def union_of_shards(array: np.ndarray, processes: int) -> np.ndarray:
    """The examples that the `processes` shards hold together."""
    return array[: len(array) - len(array) % processes]


def barrier(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def save_from_every_process(model: Any, path: Any, index: int, scratch_dir: Any) -> None:
    """All processes save (a collective); process 0 writes `path`, the others a scratch file."""
    import jaxlayer

    target = path if index == 0 else os.path.join(scratch_dir, f"process-{index}.keras")
    with jaxlayer.replicated_variables(model):
        model.save(target)
    barrier("demo model saved")
