"""Workload 10: LoRA and int8 on a ~25M-parameter Flax causal transformer, per backend.

The model is a GPT-style decoder in Flax Linen (vocabulary 6144, width 512,
6 blocks of pre-norm causal self-attention and a 4x MLP, all projections
`nn.Dense`: 25.3M parameters), trained on next-token prediction over random
tokens, batch 8, sequence 128, Adam 1e-4.

Each backend runs in its own process (Keras reads KERAS_BACKEND once). In
each, two copies of the model (same seed) are compiled side by side:

- `full`: every parameter trainable (full fine-tuning);
- `lora r8`: `layer.enable_lora(8, target=<the qkv, proj, fc and fc_out
  kernels>, freeze_others=True)`.

Their `fit` epochs are timed interleaved (ratio of medians). The child
reports each model's trainable parameters (as `summary` counts them) and
the bytes of `model.optimizer.variables`. Peak RSS is measured apart: one
fresh process per backend and variant builds the model and runs two fit
steps (VmHWM, the whole process).

int8: a third and fourth copy (same seed) serve as the float model and, after
`model.quantize("int8")`, the int8 model; both are saved as `.keras` (sizes
compared) and their `predict_on_batch` on a batch of 8 is timed interleaved.
Run as a module with `--child` it is the child.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile

import numpy as np

from .timing import Row, Stats, child_print, peak_rss_mb, run_child, stats_row

BACKENDS = ("jax", "tensorflow", "torch")
RANK = 8
TARGET = r"block_\d+\.(qkv|proj|fc|fc_out)\.kernel"
#: keras-hub's recipe trains the biases of the layers it adapts.
BIASES = r"block_\d+\.(qkv|proj|fc|fc_out)\.bias"
LORA = f"lora r{RANK}"
LORA_BIASES = f"lora r{RANK} + their biases"
LORA_MERGED = f"lora r{RANK}, merged kernels (before)"
STEP_TARGET = 1.0
OPTIMIZER_TARGET = 0.05
SIZE_TARGET = 0.3
PREDICT_TARGET = 1.2
FULL = {"vocab": 6144, "width": 512, "depth": 6, "heads": 8, "seq": 128, "batch": 8}
QUICK = {"vocab": 512, "width": 128, "depth": 2, "heads": 4, "seq": 64, "batch": 8}


def transformer(vocab: int, width: int, depth: int, heads: int, seq: int, **_):
    import flax.linen as nn
    import jax.numpy as jnp

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            h = nn.LayerNorm(name="ln_attn")(x)
            q, k, v = jnp.split(nn.Dense(3 * width, name="qkv")(h), 3, axis=-1)
            split = lambda t: t.reshape(t.shape[:2] + (heads, width // heads))  # noqa: E731
            h = nn.dot_product_attention(split(q), split(k), split(v), mask=mask)
            x = x + nn.Dense(width, name="proj")(h.reshape(x.shape))
            h = nn.gelu(nn.Dense(4 * width, name="fc")(nn.LayerNorm(name="ln_mlp")(x)))
            return x + nn.Dense(width, name="fc_out")(h)

    class CausalTransformer(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(vocab, width, name="embed")(tokens)
            x = x + nn.Embed(seq, width, name="position")(jnp.arange(tokens.shape[1]))
            mask = nn.make_causal_mask(tokens)
            for i in range(depth):
                x = Block(name=f"block_{i}")(x, mask)
            return nn.Dense(vocab, name="head")(nn.LayerNorm(name="ln_out")(x))

    return CausalTransformer()


def make_data(size: dict, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, size["vocab"], (steps * size["batch"], size["seq"] + 1)).astype(
        np.int32
    )
    return tokens[:, :-1], tokens[:, 1:]


def build(size: dict, lora: bool, biases: bool = False):
    import keras

    from jaxlayer import FlaxLayer

    keras.utils.set_random_seed(0)  # init_fn draws from Keras's global seed, as in Keras
    layer = FlaxLayer(transformer(**size))
    model = keras.Sequential([keras.Input((size["seq"],), dtype="int32"), layer])
    if lora:
        layer.enable_lora(RANK, target=TARGET, freeze_others=True)
    if lora and biases:
        for variable in layer.weights:
            if re.search(BIASES, variable.name):
                variable.trainable = True
    return model


def compiled(model):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def count(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def nbytes(variables) -> int:
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def child_steps(size: dict, steps: int, rounds: int, int8: bool = True) -> dict:
    from benchmarks.timing import interleaved

    x, y = make_data(size, steps)
    models = {
        "full": compiled(build(size, False)),
        LORA: compiled(build(size, True)),
        LORA_BIASES: compiled(build(size, True, biases=True)),
        LORA_MERGED: compiled(build(size, True)),
    }

    def epoch(name, model):
        def run():
            return model.fit(x, y, batch_size=size["batch"], epochs=1, shuffle=False, verbose=0)

        return merged_kernels(run) if name == LORA_MERGED else run

    stats = interleaved({k: epoch(k, m) for k, m in models.items()}, rounds=rounds, calls=1, warmup=1)
    out: dict = {
        "params": count(models["full"].weights),
        "step_s": {k: [s / steps for s in v.samples] for k, v in stats.items()},
        "trainable": {k: count(m.trainable_weights) for k, m in models.items()},
        "optimizer_bytes": {k: nbytes(m.optimizer.variables) for k, m in models.items()},
    }
    def loss(name, model):
        def run():
            return model.evaluate(x, y, batch_size=size["batch"], verbose=0)

        return merged_kernels(run)() if name == LORA_MERGED else run()

    losses = {k: loss(k, m) for k, m in models.items()}
    out["loss"] = {k: float(v) for k, v in losses.items()}
    del models
    if int8:
        out.update(child_int8(size))
    return out


def merged_kernels(run):
    """`run` with the adapted kernels handed to `call_fn` merged in every use,
    as before `_low_rank` (the flag is read when a program is traced)."""
    from jaxlayer import _low_rank

    def merged():
        _low_rank.ENABLED = False
        try:
            return run()
        finally:
            _low_rank.ENABLED = True

    return merged


def child_int8(size: dict) -> dict:
    from benchmarks.timing import interleaved

    x, _ = make_data(size, 1, seed=1)
    float_model, int8_model = build(size, False), build(size, False)
    int8_model.quantize("int8")
    folder = tempfile.mkdtemp()
    sizes = {}
    for name, model in (("float", float_model), ("int8", int8_model)):
        path = os.path.join(folder, f"{name}.keras")
        model.save(path)
        sizes[name] = os.path.getsize(path)
        os.remove(path)
    os.rmdir(folder)
    stats = interleaved(
        {
            "float": lambda: float_model.predict_on_batch(x),
            "int8": lambda: int8_model.predict_on_batch(x),
        },
        rounds=5,
        calls=5,
    )
    a, b = np.asarray(float_model.predict_on_batch(x)), np.asarray(int8_model.predict_on_batch(x))
    return {
        "keras_bytes": sizes,
        "predict_s": {k: v.samples for k, v in stats.items()},
        "int8_argmax_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
    }


def child_rss(size: dict, variant: str) -> dict:
    model = compiled(build(size, variant == "lora"))
    x, y = make_data(size, 2)
    model.fit(x, y, batch_size=size["batch"], epochs=1, verbose=0)
    return {"peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------ parent


def run(args) -> list[Row]:
    quick = args.quick
    size = QUICK if quick else FULL
    backends = ("jax",) if quick else BACKENDS
    steps, rounds = (2, 3) if quick else (3, 3)
    rows: list[Row] = []
    common = ["--quick"] if quick else []
    for backend in backends:
        env = {"KERAS_BACKEND": backend}
        result = run_child(
            "bench_lora",
            [
                "--child",
                backend,
                "--part",
                "steps",
                "--steps",
                str(steps),
                "--rounds",
                str(rounds),
                *common,
            ],
            env=env,
            timeout=1500,
        )
        rss = {
            variant: run_child(
                "bench_lora", ["--child", backend, "--part", variant, *common], env=env
            )
            for variant in ("full", "lora")
        }
        rows += result_rows(backend, size, result, rss)
    return rows


def result_rows(backend: str, size: dict, result: dict, rss: dict) -> list[Row]:
    # The targets hold at full size; at the quick size the embeddings and the
    # saved programs are a large share of the optimizer state and the file.
    full_size = size == FULL
    if "step_s" not in result:
        return [Row(f"lora {backend}", "-", None, note=result.get("error", "no result"))]
    millions = result["params"] / 1e6
    workload = (
        f"LoRA r{RANK} vs full, {millions:.1f}M transformer b{size['batch']} "
        f"s{size['seq']}, {backend} backend"
    )
    steps = {k: Stats(v) for k, v in result["step_s"].items()}
    full = steps["full"]
    trainable, optimizer = result["trainable"], result["optimizer_bytes"]
    rows = [
        stats_row(workload, "full fine-tuning: fit step", full,
                  note=f"trainable {trainable['full']:,}; optimizer {optimizer['full'] / 2**20:.1f} MiB"),
    ]  # fmt: skip
    for variant in (LORA, LORA_BIASES, LORA_MERGED):
        if variant not in steps:  # results saved before the biases variant existed
            continue
        rows.append(stats_row(workload, f"{variant}: fit step", steps[variant], full, "full",
                              STEP_TARGET, note=f"trainable {trainable[variant]:,}"))  # fmt: skip
        rows.append(
            Row(
                workload,
                f"{variant}: optimizer variables",
                optimizer[variant] / 2**20,
                "full",
                optimizer[variant] / optimizer["full"],
                OPTIMIZER_TARGET if full_size else None,
                unit="MiB",
            )
        )
    if all("peak_rss_mb" in r for r in rss.values()):
        full_mb, lora_mb = rss["full"]["peak_rss_mb"], rss["lora"]["peak_rss_mb"]
        rows.append(Row(workload, "full fine-tuning: peak RSS (2 fit steps)", full_mb, unit="MiB"))
        rows.append(Row(workload, f"lora r{RANK}: peak RSS (2 fit steps)", lora_mb, "full",
                        lora_mb / full_mb, unit="MiB",
                        note=f"{full_mb - lora_mb:.0f} MiB less"))  # fmt: skip
    else:
        errors = "; ".join(r.get("error", "") for r in rss.values())
        rows.append(Row(workload, "peak RSS", None, note=errors[:200]))
    sizes, predict = result["keras_bytes"], {k: Stats(v) for k, v in result["predict_s"].items()}
    int8_workload = f"int8 vs float32, {millions:.1f}M transformer, {backend} backend"
    rows += [
        Row(int8_workload, "float32 .keras", sizes["float"] / 2**20, unit="MiB"),
        Row(int8_workload, "int8 .keras", sizes["int8"] / 2**20, "float", sizes["int8"] / sizes["float"],
            SIZE_TARGET if full_size else None, unit="MiB"),
        stats_row(int8_workload, "float32 predict_on_batch", predict["float"]),
        stats_row(int8_workload, "int8 predict_on_batch", predict["int8"], predict["float"], "float",
                  PREDICT_TARGET,
                  note=f"argmax agrees with float on {result['int8_argmax_agreement']:.1%} of tokens"),
    ]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=BACKENDS, required=True)
    parser.add_argument("--part", choices=("steps", "full", "lora", "int8"), required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    cli = parser.parse_args()
    assert os.environ.get("KERAS_BACKEND") == cli.child
    size = QUICK if cli.quick else FULL
    if cli.part == "steps":
        child_print(child_steps(size, cli.steps, cli.rounds))
    elif cli.part == "int8":  # the int8 figures alone, to rerun them on a quiet machine
        child_print(child_int8(size))
    else:
        child_print(child_rss(size, cli.part))


if __name__ == "__main__":
    main()
