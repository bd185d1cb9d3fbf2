"""`jaxlayer demo --finetune`: pure-JAX checkpoint -> load by name -> LoRA -> back to pure JAX -> int8.

Every framework's pure-JAX side runs on the jax backend (where the job's
numbers are fastest); tensorflow and torch run the job once, with the plain
JAX model, to show it runs there. Epochs are few: these check the job's
mechanics and results, the demo itself (10 epochs) reaches the accuracy.
"""

from __future__ import annotations

import importlib.util
import json

import keras
import pytest

from conftest import BACKEND

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("sklearn", "matplotlib", "optax", "orbax")),
    reason="the fine-tuning demo needs scikit-learn, matplotlib, optax and orbax-checkpoint",
)

FRAMEWORKS = ["jax", "haiku", "flax", "nnx", "equinox"] if BACKEND == "jax" else ["jax"]
if BACKEND == "numpy":
    FRAMEWORKS = []  # the numpy backend cannot train


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_finetune_job(framework, tmp_path):
    pytest.importorskip({"haiku": "haiku", "flax": "flax", "nnx": "flax", "equinox": "equinox"}.get(framework, "jax"))
    from jaxlayer.demo import models
    from jaxlayer.demo._finetune import run_finetune

    lines: list[str] = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    metrics = run_finetune(framework, 2, tmp_path, pretrain_epochs=2, min_accuracy=0.5, stream=Stream())
    text = "".join(lines)
    assert metrics["passed"], text
    assert metrics["backend"] == BACKEND
    assert json.loads((tmp_path / "finetune.json").read_text())["passed"] is True
    # The body came from the pure-JAX checkpoint by name, the head is new.
    assert "4 loaded, 0 missing, 0 unexpected" in metrics["load_report"]
    assert metrics["pretrain"]["accuracy_digits_0_4"] > 0.8
    # Only the adapters, the head and the biases trained.
    assert metrics["lora"]["trainable"] == 512 * 8 + 8 * 200 + 9 * 8 + 8 * 32 + 200 * 10 + 10 + 200 + 32
    assert metrics["history"]["loss"][1] < metrics["history"]["loss"][0]
    assert metrics["test_accuracy"] >= 0.5
    # save_checkpoint (merged) restored in pure JAX predicts what Keras predicts.
    assert metrics["pure_jax_same_predictions"] and metrics["pure_jax_max_difference"] < 1e-4
    sizes = metrics["file_bytes"]
    assert sizes["int8"] < 0.3 * sizes["float"]
    assert sizes["adapters"] < 0.1 * sizes["float"]
    assert abs(metrics["int8_accuracy"] - metrics["test_accuracy"]) < 0.05

    # The saved files are working models: int8 stays int8, LoRA keeps its adapters.
    models.load(framework).register()
    int8 = keras.models.load_model(tmp_path / "int8.keras")
    assert int8.layers[0].quantization_mode == "int8"
    from jaxlayer.demo._data import load_digits

    data = load_digits()
    _, accuracy = int8.evaluate(data.x_test, data.y_test, verbose=0)
    assert accuracy == pytest.approx(metrics["int8_accuracy"], abs=1e-6)
    lora = keras.models.load_model(tmp_path / "lora.keras")
    assert lora.layers[0].lora_rank == 8
    png = (tmp_path / "finetune.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(BACKEND != "jax", reason="argument checks: once, in the jax process")
def test_finetune_rejects_options_it_cannot_honour(capsys):
    from jaxlayer import cli

    assert cli.main(["demo", "--finetune", "--processes", "2"]) == 2
    error = capsys.readouterr().err
    assert "--finetune runs in one process" in error and "--processes 2" in error
