"""scikit-learn's bundled 8x8 digits (no download), split into train and held-out sets."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._deps import SKLEARN, require


class Digits(NamedTuple):
    x_train: np.ndarray  # (n, 8, 8, 1) float32 in [0, 1]
    y_train: np.ndarray  # (n,) int32 labels 0-9
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Digits:
    """The 1,797 digits as NHWC float32 images, split stratified by label."""
    require(SKLEARN, "The demo's data set (scikit-learn's digits)")
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits: Any = sklearn_digits()
    images = (np.asarray(digits.images) / 16.0).astype("float32")[..., None]
    labels = np.asarray(digits.target).astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return Digits(*(np.asarray(a) for a in (x_train, y_train, x_test, y_test)))
