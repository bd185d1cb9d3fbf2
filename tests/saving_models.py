"""Registered model functions for the saving tests (importable by a fresh process)."""

from __future__ import annotations

import keras

from models import dense_init, mlp_apply, stateful_call, stateful_init


@keras.saving.register_keras_serializable(package="jaxlayer_tests")
def saved_call(params, inputs):
    return mlp_apply(params, inputs)


@keras.saving.register_keras_serializable(package="jaxlayer_tests")
def saved_init(rng, inputs):
    return dense_init(rng, inputs)


@keras.saving.register_keras_serializable(package="jaxlayer_tests")
def saved_stateful_call(params, state, inputs, training):
    return stateful_call(params, state, inputs, training)


@keras.saving.register_keras_serializable(package="jaxlayer_tests")
def saved_stateful_init(rng, inputs):
    return stateful_init(rng, inputs)
