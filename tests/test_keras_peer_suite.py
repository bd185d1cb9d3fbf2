"""Keras's own test module for `keras.layers.JaxLayer` / `FlaxLayer`, run
unmodified from the installed wheel against jaxlayer's classes.

The module imports the classes by name from `keras.src.utils.jax_layer`;
they are replaced there before it is imported, so every test in it builds
our layers. Keras runs it on the jax and tensorflow backends only.
"""

from __future__ import annotations

import importlib

import pytest

from conftest import BACKEND

if BACKEND not in ("jax", "tensorflow"):
    pytest.skip("Keras's JaxLayer tests run on the jax and tensorflow backends", allow_module_level=True)
pytest.importorskip("tensorflow", reason="Keras's test module imports tensorflow")
pytest.importorskip("flax", reason="Keras's test module uses Flax")
pytest.importorskip("absl.testing", reason="Keras's test module uses absl")

import keras.src.utils.jax_layer as keras_jax_layer  # noqa: E402

import jaxlayer  # noqa: E402

keras_jax_layer.JaxLayer = jaxlayer.JaxLayer
keras_jax_layer.FlaxLayer = jaxlayer.FlaxLayer
peer = importlib.import_module("keras.src.utils.jax_layer_test")
assert peer.JaxLayer is jaxlayer.JaxLayer and peer.FlaxLayer is jaxlayer.FlaxLayer

TestKerasJaxLayerSuite = peer.TestJaxLayer
