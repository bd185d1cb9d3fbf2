"""A JaxLayer trained across processes with jax.distributed and keras.distribution.

Two processes on this machine, each with 2 virtual CPU devices (the script
starts them and prints process 0's output):

    python examples/multi_process.py --local-processes 2
    python examples/multi_process.py --local-processes 2 --model-parallel

The same by hand, one command per process, which is what a cluster
scheduler does on each host (with the coordinator's address instead of
127.0.0.1; on GPUs and TPUs leave out the two CPU-only variables):

    export KERAS_BACKEND=jax JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
           XLA_FLAGS=--xla_force_host_platform_device_count=2
    export KERAS_DISTRIBUTION_JOB_ADDRESSES=127.0.0.1:12355 KERAS_DISTRIBUTION_NUM_PROCESSES=2
    KERAS_DISTRIBUTION_PROCESS_ID=0 python examples/multi_process.py &
    KERAS_DISTRIBUTION_PROCESS_ID=1 python examples/multi_process.py

Without those variables, `keras.distribution.initialize()` lets
`jax.distributed.initialize()` detect the cluster (SLURM, Open MPI, Cloud TPU).
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

GLOBAL_BATCH = 32


def launch_local(processes: int, argv: list[str]) -> int:
    """Starts this script `processes` times as one job on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    children = []
    for index in range(processes):
        env = dict(
            os.environ,
            KERAS_BACKEND="jax",
            JAX_PLATFORMS="cpu",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES=str(processes),
            KERAS_DISTRIBUTION_PROCESS_ID=str(index),
        )
        quiet = subprocess.DEVNULL if index else None  # print process 0 only
        children.append(subprocess.Popen([sys.executable, __file__, *argv], env=env, stdout=quiet))
    return max(child.wait(timeout=900) for child in children)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--local-processes", type=int, default=2)
    parser.add_argument("--model-parallel", action="store_true")
    parser.add_argument("--out", default=None, help="where process 0 saves the model")
    args, rest = parser.parse_known_args()
    if "KERAS_DISTRIBUTION_NUM_PROCESSES" not in os.environ and args.local_processes > 1:
        argv = [a for a in sys.argv[1:] if a not in ("--local-processes", str(args.local_processes))]
        sys.exit(launch_local(args.local_processes, argv + rest))

    import keras

    keras.distribution.initialize()  # before JAX touches a device

    import jax
    import jax.numpy as jnp
    import numpy as np
    from sklearn.datasets import load_digits

    import jaxlayer

    index, processes = jax.process_index(), jax.process_count()

    def init_fn(rng, inputs):
        k1, k2 = jax.random.split(rng)
        return {
            "hidden": {"w": jax.random.normal(k1, (inputs.shape[-1], 64)) / 8.0, "b": jnp.zeros(64)},
            "out": {"w": jax.random.normal(k2, (64, 10)) / 8.0, "b": jnp.zeros(10)},
        }

    def call_fn(params, inputs):
        hidden = jax.nn.relu(inputs @ params["hidden"]["w"] + params["hidden"]["b"])
        return hidden @ params["out"]["w"] + params["out"]["b"]

    devices = keras.distribution.list_devices()  # every process's devices
    if args.model_parallel:
        # Data across processes, the hidden layer split over each process's devices.
        mesh = keras.distribution.DeviceMesh((processes, len(devices) // processes), ["batch", "model"], devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map[".*hidden.w"] = (None, "model")
        layout_map[".*out.w"] = ("model", None)
        distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    else:
        distribution = keras.distribution.DataParallel(devices=devices)
    distribution.auto_shard_dataset = False  # each process passes its own shard
    keras.distribution.set_distribution(distribution)

    # The same split on every process; each then keeps every `processes`-th example.
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.RandomState(0).permutation(len(x))
    x, y = x[order], y[order]
    split = 1440
    x_train, y_train = x[:split][index::processes], y[:split][index::processes]
    x_test, y_test = x[split:1792][index::processes], y[split:1792][index::processes]

    keras.utils.set_random_seed(0)
    layer = jaxlayer.JaxLayer(call_fn, init_fn, name="mlp")
    model = keras.Sequential([keras.Input((64,)), layer])
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # Each process feeds GLOBAL_BATCH / processes examples of every global batch.
    model.fit(x_train, y_train, batch_size=GLOBAL_BATCH // processes, epochs=args.epochs, verbose=0)
    # `evaluate` reduces over the global batch: every process gets the same numbers.
    _, accuracy = model.evaluate(x_test, y_test, batch_size=GLOBAL_BATCH // processes, verbose=0)

    # Global arrays, gathered to NumPy (a collective: every process calls it).
    params = jaxlayer.to_host(layer.get_params())

    # Every process saves (variables split across processes are gathered);
    # process 0 writes the file.
    out = args.out or tempfile.mkdtemp(prefix="jaxlayer-multi-process-")
    path = os.path.join(out, "model.keras") if index == 0 else os.path.join(tempfile.mkdtemp(), "scratch.keras")
    with jaxlayer.replicated_variables(model):
        model.save(path)

    if index == 0:
        print(f"{processes} processes, {len(devices)} devices, {type(distribution).__name__}")
        print(f"layout of hidden.w: {layer.params['hidden']['w'].value.sharding.spec}")
        print(f"held-out accuracy: {accuracy:.4f}")
        keras.distribution.set_distribution(None)  # process 0 alone, on its own device
        reloaded = keras.models.load_model(path)
        saved = jaxlayer.to_host(reloaded.layers[0].get_params())
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved)))
        print(f"saved to {path}")
        print(f"gathered params match the saved model: {same}")


if __name__ == "__main__":
    main()
