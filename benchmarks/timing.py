"""Timing, memory and subprocess helpers shared by every benchmark module.

Every comparison is interleaved: all variants are warmed up, then timed in
rounds A, B, A, B, ... so that machine load drifts hit them alike. A result
keeps every round's per-call time; tables show the median and the min-max
spread, and ratios are ratios of medians.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Stats:
    """Per-call times (seconds) of one variant, one value per timed round."""

    samples: list[float]

    @property
    def median(self) -> float:
        ordered = sorted(self.samples)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def to_dict(self) -> dict:
        return {
            "median_s": self.median,
            "min_s": self.low,
            "max_s": self.high,
            "samples_s": list(self.samples),
        }


def block(value: Any) -> Any:
    """Waits for asynchronous JAX results (no-op for other values)."""
    import jax

    return jax.block_until_ready(value)


def interleaved(
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    calls: int,
    warmup: int = 2,
) -> dict[str, Stats]:
    """Times each zero-argument callable `calls` times per round, round-robin.

    Each call's result is waited for (`block`) before the next starts, so the
    time includes the computation, not just the dispatch.
    """
    for fn in variants.values():
        for _ in range(warmup):
            block(fn())
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(rounds):
        # Alternate the order each round so neither variant always goes first.
        order = list(variants.items())
        if round_index % 2:
            order.reverse()
        for name, fn in order:
            start = time.perf_counter()
            for _ in range(calls):
                block(fn())
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: Stats(values) for name, values in samples.items()}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Reads VmHWM (reset by exec, so a child does not inherit its parent's
    peak, as `ru_maxrss` does across fork); falls back to `ru_maxrss`.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(
    module: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 600
) -> dict:
    """Runs `python -m benchmarks.<module> <args>` in a fresh process.

    The child prints one JSON object on its last stdout line; it is returned.
    On failure the dict has an `error` key with the last lines of stderr.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([child_env["PYTHONPATH"]] if child_env.get("PYTHONPATH") else [])
    )
    child_env.setdefault("KERAS_BACKEND", "jax")
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if env:
        child_env.update(env)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{module}", *args],
            cwd=REPO_ROOT,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    return {"error": f"exit {proc.returncode}: {tail or 'no output'}"}


def child_print(result: dict) -> None:
    """What a child process prints last: its result as one JSON line."""
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


@dataclasses.dataclass
class Row:
    """One line of the results table: a variant measured against a baseline."""

    workload: str
    variant: str
    value: float | None  # seconds, or MiB for memory rows
    baseline: str = ""
    ratio: float | None = None
    target: float | None = None
    unit: str = "ms"
    spread: tuple[float, float] | None = None
    note: str = ""
    ratio_min: float | None = None  # ratio of the fastest rounds: robust to load

    @property
    def ok(self) -> bool | None:
        if self.ratio is None or self.target is None:
            return None
        return self.ratio <= self.target

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return out


def stats_row(
    workload: str,
    variant: str,
    stats: Stats,
    base: Stats | None = None,
    baseline: str = "",
    target: float | None = None,
    note: str = "",
) -> Row:
    return Row(
        workload=workload,
        variant=variant,
        value=stats.median,
        baseline=baseline,
        ratio=None if base is None else stats.median / base.median,
        target=target,
        unit="ms",
        spread=(stats.low, stats.high),
        note=note,
        ratio_min=None if base is None else stats.low / base.low,
    )


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1e3:.3f}"
    return f"{value:.2f}"


def format_table(rows: list[Row]) -> str:
    header = [
        "workload",
        "variant",
        "median",
        "min-max",
        "vs",
        "ratio",
        "min ratio",
        "target",
        "note",
    ]
    lines = []
    for row in rows:
        spread = "-"
        if row.spread is not None:
            spread = (
                f"{format_value(row.spread[0], row.unit)}-{format_value(row.spread[1], row.unit)}"
            )
        status = ""
        if row.ok is not None:
            status = " ok" if row.ok else " MISS"
        lines.append(
            [
                row.workload,
                row.variant,
                f"{format_value(row.value, row.unit)} {row.unit}" if row.value is not None else "-",
                spread,
                row.baseline or "-",
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                "-" if row.ratio_min is None else f"{row.ratio_min:.2f}x",
                "-" if row.target is None else f"<={row.target:g}x{status}",
                row.note,
            ]
        )
    widths = [max(len(str(r[i])) for r in lines + [header]) for i in range(len(header))]
    sep = "| " + " | ".join("-" * w for w in widths) + " |"

    def fmt(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([fmt(header), sep] + [fmt(r) for r in lines])
