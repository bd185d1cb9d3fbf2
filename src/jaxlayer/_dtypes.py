"""The dtype rules every part of jaxlayer shares.

- **Trainable and differentiated** (`is_float`): real floating dtypes only,
  float16/32/64, bfloat16 and the float8 types included. Such params become
  trainable Keras variables (following the dtype policy), and only such
  params, inputs and outputs meet a gradient, on every backend and in
  portable saves. Integer, boolean and complex leaves are held as
  non-trainable variables of their own dtype and are never differentiated
  (complex values are state-like: Keras optimizers do not update them).
- **Canonical dtype** (`canonical_dtype`): the NumPy dtype JAX computes in for
  a Keras/backend dtype (64-bit types become 32-bit unless x64 is enabled).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np


def _jax_dtype(dtype: Any) -> np.dtype:
    try:
        return jnp.dtype(dtype)
    except TypeError:  # a backend dtype (tf.DType, torch.dtype)
        return jnp.dtype(keras.backend.standardize_dtype(dtype))


def is_float(dtype: Any) -> bool:
    """Whether leaves of `dtype` are trainable and differentiated (real floating)."""
    return bool(jnp.issubdtype(_jax_dtype(dtype), jnp.floating))


def canonical_dtype(dtype: Any) -> np.dtype:
    """The dtype JAX computes in for a Keras, NumPy or backend dtype."""
    return np.dtype(jax.dtypes.canonicalize_dtype(jnp.dtype(keras.backend.standardize_dtype(dtype))))
