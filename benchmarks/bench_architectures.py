"""Workload 8: real architectures' `fit` step on each backend vs `jax.jit` + optax.

`hk.nets.ResNet18` (10 classes, 32x32x3 images, BatchNorm state) in a
`HaikuLayer`, and a Flax Linen causal transformer on token ids (2 blocks,
width 128, 4 heads, 64 tokens, vocabulary 256, dropout 0.1) in a
`FlaxLayer`; Adam 1e-3, sparse categorical cross-entropy from logits.

Each backend runs in its own process (Keras reads KERAS_BACKEND once). In
each process the hand-written baseline, a `jax.jit` step of `value_and_grad`
+ `optax.adam` on the framework's own apply (donating params, state and
optimizer state, as Keras's trainer does), is timed interleaved with `fit`,
so every ratio is measured side by side in one process. Both models also run
as stock Keras layers, trained by the same Keras trainer: the transformer
from `Embedding`, `MultiHeadAttention` with `use_causal_mask=True`,
`LayerNormalization`, `Dense` and `Dropout`, the ResNet from `Conv2D`,
`BatchNormalization`, `MaxPooling2D` and `Dense` with hk.nets.ResNet18's
widths, strides and projection shortcuts (Keras has no ResNet18:
`keras.applications` starts at ResNet50).

On tensorflow the child also splits the step: the layer's forward alone and
forward + backward under `tf.GradientTape` (both in a `tf.function`), next to
`jax.jit` of the forward and of `value_and_grad`, to show where the time goes.
Run as a module, it is the child.
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Any

import numpy as np

from .timing import Row, Stats, child_print, run_child

BACKENDS = ("jax", "tensorflow", "torch")
MODELS = ("resnet18", "transformer")
TARGET = 1.2
CLASSES = 10
VOCAB, SEQ, WIDTH, HEADS, DEPTH, DROPOUT = 256, 64, 128, 4, 2, 0.1


# ------------------------------------------------------------------ models


def resnet18_transformed():
    import haiku as hk

    def forward(images, is_training):
        return hk.nets.ResNet18(num_classes=CLASSES)(images, is_training)

    return hk.transform_with_state(forward)


def causal_transformer():
    import flax.linen as nn
    import jax.numpy as jnp

    class CausalTransformer(nn.Module):
        @nn.compact
        def __call__(self, tokens, training):
            deterministic = not training
            x = nn.Embed(VOCAB, WIDTH)(tokens)
            x = x + nn.Embed(SEQ, WIDTH)(jnp.arange(tokens.shape[1]))
            mask = nn.make_causal_mask(tokens)
            for _ in range(DEPTH):
                h = nn.MultiHeadDotProductAttention(
                    num_heads=HEADS, dropout_rate=DROPOUT, deterministic=deterministic
                )(nn.LayerNorm()(x), mask=mask)
                x = x + nn.Dropout(DROPOUT, deterministic=deterministic)(h)
                h = nn.Dense(WIDTH)(nn.gelu(nn.Dense(4 * WIDTH)(nn.LayerNorm()(x))))
                x = x + nn.Dropout(DROPOUT, deterministic=deterministic)(h)
            return nn.Dense(VOCAB)(nn.LayerNorm()(x))

    return CausalTransformer()


def stock_keras_transformer():
    """The same transformer from stock Keras layers."""
    import keras

    tokens = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, WIDTH)(tokens)
    # Symbolic positions (a concrete `arange` would be embedded once, at build).
    positions = keras.ops.zeros_like(tokens) + keras.ops.arange(SEQ, dtype="int32")
    x = x + keras.layers.Embedding(SEQ, WIDTH)(positions)
    for _ in range(DEPTH):
        h = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        h = keras.layers.MultiHeadAttention(HEADS, WIDTH // HEADS, dropout=DROPOUT)(
            h, h, use_causal_mask=True
        )
        x = x + keras.layers.Dropout(DROPOUT)(h)
        h = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        h = keras.layers.Dense(WIDTH)(keras.layers.Dense(4 * WIDTH, activation="gelu")(h))
        x = x + keras.layers.Dropout(DROPOUT)(h)
    outputs = keras.layers.Dense(VOCAB)(keras.layers.LayerNormalization(epsilon=1e-6)(x))
    return keras.Model(tokens, outputs)


def stock_keras_resnet18():
    """`hk.nets.ResNet18` from stock Keras layers: the same widths, strides,
    BatchNorm (decay 0.9, epsilon 1e-5) and projection shortcuts."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False)(x)
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    images = keras.Input((32, 32, 3))
    x = layers.ReLU()(conv_bn(images, 64, 7, 2))
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    for group, (filters, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
        for block in range(2):
            block_stride = stride if block == 0 else 1
            shortcut = x
            if block == 0 and group > 0:  # hk.nets.ResNet18's use_projection
                shortcut = conv_bn(x, filters, 1, block_stride)
            h = layers.ReLU()(conv_bn(x, filters, 3, block_stride))
            x = layers.ReLU()(layers.Add()([shortcut, conv_bn(h, filters, 3, 1)]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, layers.Dense(CLASSES)(x))


def make_data(model: str, steps: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if model == "resnet18":
        x = rng.standard_normal((steps * batch, 32, 32, 3), dtype=np.float32)
        y = rng.integers(0, CLASSES, steps * batch).astype(np.int32)
        return x, y
    tokens = rng.integers(0, VOCAB, (steps * batch, SEQ + 1)).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


class Setup:
    """A model's layer, its pure `apply_train(params, state, key, x)`, initial values."""

    def __init__(self, model: str, x_sample: np.ndarray):
        import jax

        if model == "resnet18":
            from jaxlayer import HaikuLayer

            transformed = resnet18_transformed()
            self.params, self.state = jax.jit(lambda k, x: transformed.init(k, x, True))(
                jax.random.key(0), x_sample
            )

            def apply_train(params, state, key, x):
                return transformed.apply(params, state, None, x, True)

            self.make_layer = lambda: HaikuLayer(
                transformed, params=self.params, state=self.state, seed=0
            )
            self.apply_infer = lambda p, s, x: transformed.apply(p, s, None, x, False)[0]
        else:
            from jaxlayer import FlaxLayer

            module = causal_transformer()
            variables = jax.jit(lambda k, x: module.init(k, x, False))(
                jax.random.key(0), x_sample
            )
            self.params, self.state = {"params": variables["params"]}, {}

            def apply_train(params, state, key, x):
                logits = module.apply(params, x, True, rngs={"dropout": key})
                return logits, state

            self.make_layer = lambda: FlaxLayer(module, variables=variables, seed=0)
            self.apply_infer = lambda p, s, x: module.apply(p, x, False)
        self.apply_train = apply_train


def sparse_ce(logits, labels):
    import jax
    import jax.numpy as jnp

    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], axis=-1))


# ---------------------------------------------------------------- variants


def pure_epoch(setup: Setup, x: np.ndarray, y: np.ndarray, batch: int):
    """One epoch of a hand-written jitted value_and_grad + optax Adam step."""
    import jax
    import optax

    optimizer = optax.adam(1e-3)

    def loss_fn(params, state, key, xb, yb):
        logits, new_state = setup.apply_train(params, state, key, xb)
        return sparse_ce(logits, yb), new_state

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, state, opt_state, key, xb, yb):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, key, xb, yb
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    copy = functools.partial(jax.tree.map, jax.numpy.array)  # donated: our own buffers
    carry = {"p": copy(setup.params), "s": copy(setup.state)}
    carry["o"] = optimizer.init(carry["p"])
    keys = {"k": jax.random.key(1)}
    steps = len(x) // batch

    def epoch():
        p, s, o, loss = carry["p"], carry["s"], carry["o"], None
        for i in range(steps):
            keys["k"], key = jax.random.split(keys["k"])
            sl = slice(i * batch, (i + 1) * batch)
            p, s, o, loss = step(p, s, o, key, x[sl], y[sl])
        carry.update(p=p, s=s, o=o)
        return loss

    return epoch


def keras_epoch(model: Any, x: np.ndarray, y: np.ndarray, batch: int, jit_compile="auto"):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )

    def epoch():
        history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return history.history["loss"][-1]

    return epoch


def tensorflow_split(setup: Setup, layer: Any, x: np.ndarray, y: np.ndarray) -> dict:
    """Zero-argument callables for the forward and forward+backward, TF vs JAX."""
    import jax
    import keras
    import tensorflow as tf

    xt, yt = tf.constant(x), tf.constant(y)
    loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = layer.trainable_variables

    @tf.function(jit_compile=False, reduce_retracing=True)
    def tf_forward():
        return loss_object(yt, layer(xt, training=True))

    @tf.function(jit_compile=False, reduce_retracing=True)
    def tf_forward_backward():
        with tf.GradientTape() as tape:
            loss = loss_object(yt, layer(xt, training=True))
        return tape.gradient(loss, variables)

    params, state, key = setup.params, setup.state, jax.random.key(1)

    def loss_fn(p):
        logits, new_state = setup.apply_train(p, state, key, x)
        return sparse_ce(logits, y), new_state

    jax_forward = jax.jit(loss_fn)
    jax_forward_backward = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    return {
        "tf: layer forward": lambda: tf_forward().numpy(),
        "tf: layer forward+backward": lambda: [g.numpy() for g in tf_forward_backward()],
        "jax.jit forward": lambda: jax_forward(params),
        "jax.jit value_and_grad": lambda: jax_forward_backward(params),
    }


def child(backend: str, model: str, steps: int, rounds: int, batch: int) -> dict:
    assert os.environ.get("KERAS_BACKEND") == backend
    import keras

    from benchmarks.timing import interleaved

    x, y = make_data(model, steps, batch)
    setup = Setup(model, x[:batch])
    layer = setup.make_layer()
    ours = keras.Sequential([keras.Input(x.shape[1:], dtype=x.dtype.name), layer])
    failures: dict[str, str] = {}
    epochs = {
        "pure jax+optax": pure_epoch(setup, x, y, batch),
        "jaxlayer": keras_epoch(ours, x, y, batch),
    }
    if backend == "tensorflow":
        # Keras's "auto" turns XLA off for the TF train step on CPU-only
        # machines: the optimizer then runs as separate TF ops.
        twin = keras.Sequential([keras.Input(x.shape[1:], dtype=x.dtype.name), setup.make_layer()])
        epoch = keras_epoch(twin, x, y, batch, jit_compile=True)
        try:
            epoch()
        except Exception as error:  # noqa: BLE001 - reported instead of a time
            failures["jaxlayer, jit_compile=True"] = f"{type(error).__name__}: {error}"[:200]
        else:
            epochs["jaxlayer, jit_compile=True"] = epoch
    stock = stock_keras_resnet18 if model == "resnet18" else stock_keras_transformer
    epochs["stock Keras layers"] = keras_epoch(stock(), x, y, batch)
    stats = interleaved(epochs, rounds=rounds, calls=1, warmup=1)
    out = {
        "step_s": {k: [s / steps for s in v.samples] for k, v in stats.items()},
        "failed": failures,
    }
    if backend == "tensorflow":
        split = tensorflow_split(setup, layer, x[:batch], y[:batch])
        stats = interleaved(split, rounds=rounds, calls=steps, warmup=1)
        out["split_s"] = {k: v.samples for k, v in stats.items()}
    return out


# ------------------------------------------------------------------ parent


def run(args) -> list[Row]:
    rows: list[Row] = []
    # These steps are 20-100x the MLP's: fewer of them, in at most 5 rounds.
    steps = max(2, args.fit_steps // 6)
    rounds = min(args.rounds, 5)
    batch = 16 if args.quick else 32
    for model in MODELS:
        for backend in BACKENDS:
            workload = f"fit step {model} b{batch}, {backend} backend"
            result = run_child(
                "bench_architectures",
                [
                    "--child", backend, "--model", model, "--steps", str(steps),
                    "--rounds", str(rounds), "--batch", str(batch),
                ],
                env={"KERAS_BACKEND": backend},
                timeout=900,
            )  # fmt: skip
            rows += result_rows(workload, f"{model} b{batch}", result)
    return rows


def result_rows(workload: str, label: str, result: dict) -> list[Row]:
    """The table rows of one child's result."""
    if "step_s" not in result:
        return [Row(workload, "jaxlayer", None, note=result.get("error", ""))]
    per_step = {k: Stats(v) for k, v in result["step_s"].items()}
    base = per_step.pop("pure jax+optax")
    rows = [Row(workload, "pure jax+optax", base.median, spread=(base.low, base.high))]
    for variant, stats in per_step.items():
        rows.append(
            Row(
                workload,
                variant,
                stats.median,
                "pure",
                stats.median / base.median,
                TARGET if variant == "jaxlayer" else None,
                spread=(stats.low, stats.high),
                ratio_min=stats.low / base.low,
            )
        )
    for variant, why in result.get("failed", {}).items():
        rows.append(Row(workload, variant, None, note=why))
    split = {k: Stats(v) for k, v in result.get("split_s", {}).items()}
    pairs = (
        ("tf: layer forward", "jax.jit forward"),
        ("tf: layer forward+backward", "jax.jit value_and_grad"),
    )
    for ours, reference in pairs if split else ():
        a, b = split[ours], split[reference]
        w = f"{label} tensorflow split"
        rows.append(Row(w, reference, b.median, spread=(b.low, b.high)))
        rows.append(
            Row(
                w,
                ours,
                a.median,
                "jax.jit",
                a.median / b.median,
                spread=(a.low, a.high),
                ratio_min=a.low / b.low,
            )
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=BACKENDS, required=True)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    child_print(child(args.child, args.model, args.steps, args.rounds, args.batch))


if __name__ == "__main__":
    main()
