"""`run_finetune`: the fine-tuning job, from a pure-JAX checkpoint back to pure JAX.

1. Pretrain the demo CNN on digits 0-4 in pure JAX (optax), write a checkpoint
   with the framework's tool (Orbax; `.eqx` for Equinox).
2. Wrap a fresh model in its jaxlayer layer, `load_checkpoint(..., skip=head)`:
   the body comes from the checkpoint, the 10-class head is new.
3. `enable_lora` on the body's kernels; `model.fit` trains the head and the
   adapters on all ten digits.
4. `save_checkpoint` writes the merged weights; the pure-JAX model restores
   them and must predict what Keras predicts.
5. `merge_lora`, `model.quantize("int8")`: accuracy and file sizes.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import models
from ._data import Digits, load_digits
from ._deps import BACKEND_REQUIREMENTS, MATPLOTLIB, SKLEARN, Requirement, check
from ._pure import PureModel, pure_model
from ._report import plot_history, write_metrics
from ._train import QUIET

OPTAX = Requirement("optax", "optax", "test")
ORBAX = Requirement("orbax.checkpoint", "orbax-checkpoint", "checkpoints")
PRETRAIN_CLASSES = 5  # digits 0-4
LORA_RANK = 8


def check_finetune_requirements(framework: str, backend: str) -> None:
    """Raises `MissingDependency` (one line with the pip extra) before any work."""
    needs = (SKLEARN, MATPLOTLIB, OPTAX, *models.load(framework).REQUIRES)
    check((*needs, ORBAX) if framework != "equinox" else needs, f"the {framework} fine-tuning demo")
    check(BACKEND_REQUIREMENTS.get(backend, ()), f"the demo on the Keras {backend} backend")


def pretrain(pure: PureModel, data: Digits, *, epochs: int, seed: int, say) -> tuple[Any, float]:
    """Adam on digits 0-4 in pure JAX; returns (trained tree, held-out accuracy on 0-4)."""
    import jax
    import jax.numpy as jnp
    import optax

    keep = data.y_train < PRETRAIN_CLASSES
    x, y = data.x_train[keep], data.y_train[keep]
    test = data.y_test < PRETRAIN_CLASSES
    optimizer = optax.adam(3e-3)

    def loss_fn(tree, xb, yb):
        probs = pure.apply(tree, xb)
        return -jnp.mean(jnp.log(jnp.take_along_axis(probs, yb[:, None], axis=1) + 1e-7))

    @jax.jit
    def step(tree, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(tree, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, tree)
        return optax.apply_updates(tree, updates), opt_state, loss

    predict = jax.jit(pure.apply)
    tree, opt_state = pure.tree, optimizer.init(pure.tree)
    order = np.random.default_rng(seed)
    batch = 32
    accuracy = 0.0
    for epoch in range(epochs):
        perm = order.permutation(len(x))
        losses = []
        for start in range(0, len(x) - batch + 1, batch):
            idx = perm[start : start + batch]
            tree, opt_state, loss = step(tree, opt_state, x[idx], y[idx])
            losses.append(float(loss))
        predicted = np.argmax(np.asarray(predict(tree, data.x_test[test])), axis=-1)
        accuracy = float(np.mean(predicted == data.y_test[test]))
        say(f"  pretrain epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, "
            f"held-out accuracy on 0-4 {accuracy:.4f}")  # fmt: skip
    return tree, accuracy


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _accuracy(model, data: Digits) -> float:
    return float(model.evaluate(data.x_test, data.y_test, **QUIET)[1])


def run_finetune(
    framework: str = "flax",
    epochs: int = 10,
    out_dir: str | Path = "demo-out",
    *,
    seed: int = 0,
    min_accuracy: float = 0.9,
    pretrain_epochs: int = 5,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Runs the fine-tuning job in the active Keras backend; returns its metrics.

    Args:
        framework: `"jax"`, `"haiku"`, `"flax"`, `"nnx"` or `"equinox"`.
        epochs: Keras fine-tuning epochs (LoRA rank 8 on the body, new head).
        out_dir: where the checkpoints, `.keras` files, adapters,
            `finetune.png` and `finetune.json` go.
        seed: seeds the initial weights, the data split and the shuffling.
        min_accuracy: held-out accuracy (all ten digits, LoRA model) to pass.
        pretrain_epochs: pure-JAX epochs on digits 0-4.
        stream: where the summary is printed (default: stdout).

    Returns:
        The metrics written to `finetune.json`; `metrics["passed"]` is True when
        the accuracy reaches `min_accuracy` and the pure-JAX model restored
        from `save_checkpoint` predicts what the Keras model predicts.
    """
    import jax
    import keras

    stream = stream or sys.stdout

    def say(line: str = "") -> None:
        print(line, file=stream, flush=True)

    backend = keras.config.backend()
    check_finetune_requirements(framework, backend)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(seed)
    np.random.seed(seed)
    data = load_digits(seed=seed)

    say(f"jaxlayer demo --finetune: {framework} on the Keras {backend} backend")
    say(f"1. pretrain in pure JAX (optax Adam) on digits 0-4, {pretrain_epochs} epochs")
    pure = pure_model(framework, seed, data.x_train[:2])
    pretrained, pretrain_accuracy = pretrain(
        pure, data, epochs=pretrain_epochs, seed=seed, say=say
    )
    pretrained_path = out_dir / f"pretrained{pure.suffix}"
    _remove(pretrained_path)
    pure.save(pretrained, str(pretrained_path))
    say(f"  checkpoint: {pretrained_path}")

    say("2. Keras model, 10-class head; load_checkpoint(skip=head)")
    layer = models.load(framework).make_layer(seed + 1)
    model = keras.Sequential([keras.Input(data.x_train.shape[1:]), layer], name=f"finetune_{framework}")
    report = layer.load_checkpoint(str(pretrained_path), skip=pure.skip)
    for line in str(report).splitlines():
        say(f"  {line}")

    say(f"3. enable_lora(rank={LORA_RANK}, target={pure.body!r}); fit on all ten digits")
    layer.enable_lora(LORA_RANK, target=pure.body)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    say(f"  trainable: {trainable:,} of {total:,} values (adapters, head, biases)")
    history = model.fit(
        data.x_train, data.y_train, epochs=epochs, batch_size=32,
        validation_split=0.1, verbose="auto",
    ).history  # fmt: skip
    history = {key: [float(v) for v in values] for key, values in history.items()}
    lora_accuracy = _accuracy(model, data)
    say(f"  held-out accuracy          {lora_accuracy:.4f} on {len(data.y_test)} digits (LoRA)")
    lora_keras, adapters = out_dir / "lora.keras", out_dir / "adapters.lora.h5"
    model.save(lora_keras)
    layer.save_lora_weights(str(adapters))

    say("4. save_checkpoint (merged) -> restore in pure JAX -> compare")
    finetuned_path = out_dir / f"finetuned{pure.suffix}"
    _remove(finetuned_path)
    layer.save_checkpoint(str(finetuned_path))
    keras_probs = np.asarray(model.predict(data.x_test, batch_size=128, **QUIET))
    jax_probs = np.asarray(jax.jit(pure.apply)(pure.restore(str(finetuned_path)), data.x_test))
    difference = float(np.max(np.abs(jax_probs - keras_probs)))
    same = bool(difference < 1e-4 and np.array_equal(jax_probs.argmax(-1), keras_probs.argmax(-1)))
    say(f"  pure JAX vs Keras          max |difference| {difference:.2e} "
        f"({'same predictions' if same else 'DIFFERENT predictions'})")  # fmt: skip

    float_keras, int8_keras, int8_accuracy = _merge_and_quantize(model, layer, data, out_dir, say)
    sizes = {
        "float": _size(float_keras),
        "int8": _size(int8_keras),
        "adapters": _size(adapters),
        "lora": _size(lora_keras),
    }

    plot_path, metrics_path = out_dir / "finetune.png", out_dir / "finetune.json"
    plot_history(
        history, plot_path,
        f"jaxlayer fine-tuning: {framework} on Keras {backend}, LoRA rank {LORA_RANK}, "
        f"held-out accuracy {lora_accuracy:.3f}",
    )  # fmt: skip
    accurate = lora_accuracy >= min_accuracy
    passed = accurate and same
    metrics = {
        "framework": framework,
        "backend": backend,
        "seed": seed,
        "pretrain": {"epochs": pretrain_epochs, "accuracy_digits_0_4": pretrain_accuracy},
        "load_report": str(report),
        "lora": {"rank": LORA_RANK, "target": pure.body, "trainable": trainable, "total": total},
        "epochs": epochs,
        "history": history,
        "test_accuracy": lora_accuracy,
        "test_digits": len(data.y_test),
        "int8_accuracy": int8_accuracy,
        "min_accuracy": min_accuracy,
        "pure_jax_max_difference": difference,
        "pure_jax_same_predictions": same,
        "file_bytes": sizes,
        "files": {
            "pretrained": str(pretrained_path), "finetuned": str(finetuned_path),
            "lora_model": str(lora_keras), "adapters": str(adapters),
            "float_model": str(float_keras), "int8_model": str(int8_keras),
            "plot": str(plot_path), "metrics": str(metrics_path),
        },  # fmt: skip
        "passed": passed,
    }
    write_metrics(metrics, metrics_path)

    _say_summary(say, metrics, report)
    return metrics


def _merge_and_quantize(model, layer, data: Digits, out_dir: Path, say) -> tuple[Path, Path, float]:
    """Step 5: merge the adapters, save float, quantize to int8, save int8."""
    say('5. merge_lora(), model.quantize("int8")')
    layer.merge_lora()
    float_keras, int8_keras = out_dir / "float.keras", out_dir / "int8.keras"
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(float_keras)
    model.quantize("int8")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    int8_accuracy = _accuracy(model, data)
    model.save(int8_keras)
    return float_keras, int8_keras, int8_accuracy


def _say_summary(say, metrics: dict[str, Any], report) -> None:
    """The closing summary, from the metrics written to `finetune.json`."""
    min_accuracy, lora_accuracy = metrics["min_accuracy"], metrics["test_accuracy"]
    int8_accuracy, sizes, files = metrics["int8_accuracy"], metrics["file_bytes"], metrics["files"]
    trainable, total = metrics["lora"]["trainable"], metrics["lora"]["total"]
    mark = f"ok, >= {min_accuracy:.2f}" if lora_accuracy >= min_accuracy else f"BELOW the required {min_accuracy:.2f}"
    say()
    say("Summary")
    say(f"  framework / backend        {metrics['framework']} / {metrics['backend']}")
    say(f"  pretrained (pure JAX)      accuracy {metrics['pretrain']['accuracy_digits_0_4']:.4f} on digits 0-4 "
        f"-> {files['pretrained']}")  # fmt: skip
    say(f"  loaded by name             {len(report.loaded)} variables; skipped (new head) "
        f"{len(report.skipped)}")  # fmt: skip
    say(f"  LoRA rank {LORA_RANK}                trainable {trainable:,} of {total:,} values")
    say(f"  held-out accuracy          {lora_accuracy:.4f} on {metrics['test_digits']} digits ({mark})")
    say(f"  int8 held-out accuracy     {int8_accuracy:.4f} ({int8_accuracy - lora_accuracy:+.4f})")
    say(f"  file sizes                 float {sizes['float']:,} B, int8 {sizes['int8']:,} B "
        f"({sizes['int8'] / sizes['float']:.2f}x), adapters only {sizes['adapters']:,} B")  # fmt: skip
    say(f"  back to pure JAX           {files['finetuned']}: max |difference| "
        f"{metrics['pure_jax_max_difference']:.2e}")  # fmt: skip
    say(f"  training curves            {files['plot']}")
    say(f"  metrics                    {files['metrics']}")
    say("PASSED" if metrics["passed"] else "FAILED")


def _remove(path: Path) -> None:
    """Orbax will not overwrite a directory; a rerun replaces the previous output."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()

