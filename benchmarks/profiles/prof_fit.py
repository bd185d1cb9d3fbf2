"""Profiles target: `python benchmarks/profiles/prof_fit.py fit|predict`.

    py-spy record -r 200 -f raw -o fit.raw -- python benchmarks/profiles/prof_fit.py fit
    python benchmarks/profiles/aggregate_pyspy.py fit.raw timed_loop
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402, F401
import keras  # noqa: E402
from benchmarks.bench_fit import keras_epoch, make_data  # noqa: E402
from benchmarks.models import mlp_apply, mlp_init  # noqa: E402

from jaxlayer import JaxLayer  # noqa: E402


def timed_loop(run, repeats=5):
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def main(what):
    x, y = make_data("mlp", 40, 128)
    if what == "fit":
        run = keras_epoch(JaxLayer(mlp_apply, mlp_init([784, 512, 512, 10])), x, y, 128)
    else:
        init_fn = mlp_init([784] + [256] * 5 + [10])
        model = keras.Sequential([keras.Input((784,)), JaxLayer(mlp_apply, init_fn)])
        batch = x[:32]

        def run():
            for _ in range(400):
                model.predict_on_batch(batch)

    run()  # compile
    print(what, timed_loop(run))


if __name__ == "__main__":
    main(sys.argv[1])
