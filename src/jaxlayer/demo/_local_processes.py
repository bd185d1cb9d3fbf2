"""Launching a Keras/JAX program as several local processes (`jax.distributed`).

Each process gets the environment that `keras.distribution.initialize()`
reads (`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `..._NUM_PROCESSES`,
`..._PROCESS_ID`), a coordinator on 127.0.0.1 at a free port, its own virtual
CPU devices, and gloo CPU collectives. Used by `jaxlayer demo --processes N`
and by the multi-process tests; on a real cluster the scheduler (or
`jax.distributed.initialize()`'s auto-detection) provides the same values.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ProcessResult:
    """What one local process did: its id, exit code and output."""

    process_id: int
    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(
    process_id: int,
    num_processes: int,
    port: int,
    devices_per_process: int,
    base: dict | None = None,
) -> dict:
    """The environment of local process `process_id` of `num_processes`."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env.update(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=" ".join(flags),
        # CPU devices of different processes talk through gloo collectives.
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
        KERAS_DISTRIBUTION_NUM_PROCESSES=str(num_processes),
        KERAS_DISTRIBUTION_PROCESS_ID=str(process_id),
    )
    return env


def run_local_processes(
    argv: list[str],
    num_processes: int,
    devices_per_process: int = 1,
    timeout: float = 300.0,
    env: dict | None = None,
    echo_first: bool = False,
) -> list[ProcessResult]:
    """Runs `argv` as `num_processes` processes that form one JAX job.

    Returns when all have exited. When one fails, the others (which would
    wait for it forever in a collective) are stopped after a short grace
    period; when `timeout` seconds pass, all are stopped (exit code -9).
    With `echo_first`, process 0 writes to this process's stdout/stderr.
    """
    if num_processes < 1:
        raise ValueError(f"`num_processes` must be >= 1, received {num_processes}.")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="jaxlayer-processes-") as tmp:
        procs, logs = [], []
        for pid in range(num_processes):
            out = open(Path(tmp) / f"{pid}.out", "w+")  # noqa: SIM115 - closed below
            err = open(Path(tmp) / f"{pid}.err", "w+")  # noqa: SIM115
            logs.append((out, err))
            echo = echo_first and pid == 0
            procs.append(
                subprocess.Popen(
                    argv,
                    env=process_env(pid, num_processes, port, devices_per_process, env),
                    stdout=None if echo else out,
                    stderr=None if echo else err,
                )
            )
        deadline = time.monotonic() + timeout
        failed_at = None
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = now
            if now > deadline or (failed_at is not None and now > failed_at + 20):
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                break
            time.sleep(0.1)
        results = []
        for pid, (p, (out, err)) in enumerate(zip(procs, logs)):
            p.wait()
            out.seek(0)
            err.seek(0)
            results.append(ProcessResult(pid, p.returncode, out.read(), err.read()))
            out.close()
            err.close()
        return results
