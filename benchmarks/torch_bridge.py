"""The PyTorch bridge's overhead: forward + backward through the layer vs `jax.vjp`.

MLP 784-512-512-10, batch 128, gradients with respect to the parameters.
Variants, timed interleaved in one process after warm-up:

- `jaxlayer on torch`: `layer(x, training=True)` on torch tensors, then
  `out.backward(ones)`, so torch's autograd calls the bridge's backward;
  the parameter gradients land in the variables' `.grad`.
- `jax.vjp, compiled`: the same computation in JAX alone: a `jax.jit` of the
  forward that returns the `jax.vjp` pullback, then the jitted pullback. This
  is the floor the bridge runs on; the ratio is the bridge's overhead (DLPack,
  the autograd function, Keras's `__call__`).
- `TorchBridge.run only`: the bridge called directly (no Keras `__call__`).
- `jax.vjp of jitted fn`: `jax.vjp(jax.jit(mlp), ...)` called eagerly, for
  reference (what a hand-written eager JAX loop often does).

Run: `KERAS_BACKEND=torch .venv/bin/python -m benchmarks.torch_bridge [--json PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"  # Keras reads it once, at import
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.models import mlp_apply, mlp_init  # noqa: E402
from benchmarks.timing import Row, format_table, interleaved, stats_row  # noqa: E402
from jaxlayer import JaxLayer  # noqa: E402

SIZES = [784, 512, 512, 10]
TARGET = 1.5


def measure(batch: int, rounds: int, calls: int) -> list[Row]:
    x_np = np.random.default_rng(0).normal(size=(batch, SIZES[0])).astype("float32")
    layer = JaxLayer(mlp_apply, mlp_init(SIZES))
    layer(torch.from_numpy(x_np))  # build
    device = layer.trainable_variables[0].value.device  # where Keras keeps the variables
    x_torch = torch.from_numpy(x_np).to(device)
    params = layer.get_params()
    x_jax = jnp.asarray(x_np)
    ones_torch = torch.ones(batch, SIZES[-1], device=device)
    ones_jax = jnp.ones((batch, SIZES[-1]))

    def through_layer():
        for variable in layer.trainable_variables:
            variable.value.grad = None
        layer(x_torch, training=True).backward(ones_torch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return [variable.value.grad for variable in layer.trainable_variables]

    bridge = layer._bridge
    param_values = [variable.value for variable in layer._param_variables]

    def through_bridge():
        # The bridge alone, without Keras's `Layer.__call__` around it.
        for variable in layer.trainable_variables:
            variable.value.grad = None
        outputs, _ = bridge.run(layer._program, param_values, [], None, x_torch, True)
        outputs.backward(ones_torch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return None

    @jax.jit
    def forward(params, x):
        _, pullback = jax.vjp(lambda p: mlp_apply(p, x), params)
        return pullback

    @jax.jit
    def backward(pullback, cotangent):
        return pullback(cotangent)[0]

    def compiled_vjp():
        return backward(forward(params, x_jax), ones_jax)

    jitted = jax.jit(mlp_apply)

    def eager_vjp():
        _, pullback = jax.vjp(jitted, params, x_jax)
        return pullback(ones_jax)[0]

    # The layer's gradients must be the reference's before anything is timed.
    through_layer()
    got = [variable.value.grad.cpu().numpy() for variable in layer._param_variables]
    for grad, want in zip(got, jax.tree.leaves(compiled_vjp())):
        np.testing.assert_allclose(grad, np.asarray(want), rtol=1e-4, atol=1e-4)

    stats = interleaved(
        {
            "layer": through_layer,
            "bridge": through_bridge,
            "compiled": compiled_vjp,
            "eager": eager_vjp,
        },
        rounds=rounds,
        calls=calls,
        warmup=3,
    )
    workload = f"fwd+bwd mlp 784-512-512-10 b{batch}"
    return [
        stats_row(workload, "jax.vjp, compiled", stats["compiled"]),
        stats_row(workload, "jax.vjp of jitted fn", stats["eager"], stats["compiled"], "compiled"),
        stats_row(workload, "TorchBridge.run only", stats["bridge"], stats["compiled"], "compiled"),
        stats_row(
            workload, "jaxlayer on torch", stats["layer"], stats["compiled"], "compiled", TARGET
        ),
    ]


def layer_device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = measure(args.batch, args.rounds, args.calls)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} on "
        f"{layer_device()}"
    )
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([row.to_dict() for row in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
