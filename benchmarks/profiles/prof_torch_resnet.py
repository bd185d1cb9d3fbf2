"""Where a torch-backend ResNet18 `fit` step goes: ours, stock Keras, pure JAX.

    KERAS_BACKEND=torch python benchmarks/profiles/prof_torch_resnet.py [--steps 5]

In one process: `hk.nets.ResNet18` in a `HaikuLayer`, the same network from
stock Keras layers (`bench_architectures.stock_keras_resnet18`), and the
hand-written `jax.jit` + optax step. Each Keras model's train step is run in
the phases of Keras's torch trainer (`TorchTrainer.train_step`): forward
(with the state write-back), loss, backward, optimizer; the layer's forward
and backward are split further by timing the torch bridge's own functions
(DLPack in, the compiled JAX forward or backward, DLPack out, the state
write-back) and counting their calls. Prints one JSON object: medians in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


class Timers:
    """Accumulated seconds and call counts per label, reset per step."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, label, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1

        return timed

    def take(self) -> tuple[dict, dict]:
        seconds, calls = dict(self.seconds), dict(self.calls)
        self.seconds.clear()
        self.calls.clear()
        return seconds, calls


def instrument_bridge(timers: Timers) -> None:
    """Times the torch bridge's pieces in place (module globals it looks up)."""
    import jaxlayer._layer as layer_module
    from jaxlayer._backends import torch as bridge

    bridge._leaf_to_jax = timers.wrap(
        "bridge: DLPack torch->jax (params, state, inputs)", bridge._leaf_to_jax
    )
    bridge._tensor_to_jax = timers.wrap("bridge: DLPack torch->jax (all)", bridge._tensor_to_jax)
    bridge._jax_to_tensor = timers.wrap("bridge: DLPack jax->torch (all)", bridge._jax_to_tensor)
    import jax

    def waiting(fn):
        # Blocks inside the timer: the bridge's own wait then returns at once.
        def run(*args, **kwargs):
            return jax.block_until_ready(fn(*args, **kwargs))

        return run

    bridge._vjp_backward = timers.wrap(
        "bridge: JAX backward (compute)", waiting(bridge._vjp_backward)
    )
    compiled_forward = bridge._compiled_forward

    def timed_compiled_forward(program, training):
        compiled = compiled_forward(program, training)
        label = "bridge: JAX forward with residuals (compute)"
        return compiled._replace(fn=timers.wrap(label, waiting(compiled.fn)))

    bridge._compiled_forward = timed_compiled_forward
    bridge._seed_to_key = timers.wrap("bridge: rng seed -> key", bridge._seed_to_key)
    original_call_with = layer_module.JaxLayer._call_with

    def call_with(self, run, inputs, training):
        # The state write-back is the loop at the end of `_call_with`: timed
        # as the difference between the whole call and `run`.
        return original_call_with(self, timers.wrap("layer: bridge run", run), inputs, training)

    layer_module.JaxLayer._call_with = timers.wrap(
        "layer: call (run + state write-back)", call_with
    )


def keras_phases(model, x, y, steps: int, timers: Timers) -> dict:
    """Per-phase medians (ms) of Keras's torch train step, run by hand."""
    import torch

    loss_fn = model.loss
    phases = defaultdict(list)
    bridge_seconds = defaultdict(list)
    bridge_calls: dict = {}
    for i in range(steps + 2):
        timers.take()
        t0 = time.perf_counter()
        y_pred = model(x, training=True)
        t1 = time.perf_counter()
        loss = loss_fn(y, y_pred)
        t2 = time.perf_counter()
        model.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        variables = model.trainable_weights
        grads = [v.value.grad for v in variables]
        with torch.no_grad():
            model.optimizer.apply(grads, variables)
        t4 = time.perf_counter()
        seconds, calls = timers.take()
        if i < 2:  # compile and optimizer-variable creation
            continue
        for name, a, b in (
            ("forward", t0, t1),
            ("loss", t1, t2),
            ("backward", t2, t3),
            ("optimizer", t3, t4),
        ):
            phases[name].append(b - a)
        phases["sum of phases"].append(t4 - t0)
        for label, value in seconds.items():
            bridge_seconds[label].append(value)
        bridge_calls = calls
    for _ in range(2):
        model.train_on_batch(x, y)
    whole = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        whole.append(time.perf_counter() - start)
    out = {k: 1e3 * statistics.median(v) for k, v in phases.items()}
    out["train_on_batch"] = 1e3 * statistics.median(whole)
    out["bridge_ms"] = {k: 1e3 * statistics.median(v) for k, v in bridge_seconds.items()}
    out["bridge_calls_per_step"] = bridge_calls
    return out


def pure_jax(setup, x, y, steps: int) -> dict:
    import jax
    import optax
    from benchmarks.bench_architectures import sparse_ce

    optimizer = optax.adam(1e-3)

    def loss_fn(params, state, xb, yb):
        logits, new_state = setup.apply_train(params, state, None, xb)
        return sparse_ce(logits, yb), new_state

    forward = jax.jit(lambda p, s, xb: setup.apply_train(p, s, None, xb))
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

    @jax.jit
    def step(params, state, opt_state, xb, yb):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    p, s = setup.params, setup.state
    o = optimizer.init(p)
    timings = defaultdict(list)
    for i in range(steps + 2):
        for name, fn in (
            ("forward", lambda: forward(p, s, x)),
            ("forward+backward", lambda: grad(p, s, x, y)),
            ("whole step", lambda: step(p, s, o, x, y)),
        ):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            if i >= 2:
                timings[name].append(time.perf_counter() - start)
    return {k: 1e3 * statistics.median(v) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    cli = parser.parse_args()
    import keras
    import torch
    from benchmarks import bench_architectures as arch

    assert keras.config.backend() == "torch", "run with KERAS_BACKEND=torch"
    x_np, y_np = arch.make_data("resnet18", 1, cli.batch)
    setup = arch.Setup("resnet18", x_np)
    timers = Timers()
    instrument_bridge(timers)
    models = {
        "jaxlayer": keras.Sequential([keras.Input(x_np.shape[1:]), setup.make_layer()]),
        "stock Keras layers": arch.stock_keras_resnet18(),
    }
    x, y = torch.as_tensor(x_np), torch.as_tensor(y_np, dtype=torch.int64)
    out: dict = {"batch": cli.batch, "steps": cli.steps}
    for name, model in models.items():
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        out[name] = keras_phases(model, x, y, cli.steps, timers)
        out[name]["trainable variables"] = len(model.trainable_weights)
        out[name]["non-trainable variables"] = len(model.non_trainable_weights)
    out["pure jax+optax"] = pure_jax(setup, x_np, y_np, cli.steps)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
