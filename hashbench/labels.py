"""Labels are multi-hot matrices everywhere in the harness, single-label datasets included."""

from __future__ import annotations

from typing import Any

import numpy as np

from hashbench.errors import UserError


def to_multi_hot(labels: Any, num_classes: int | None = None, *, name: str = "labels") -> np.ndarray:
    """Return labels as a bool matrix ``(n, classes)``.

    Accepts integer class ids ``(n,)`` (or ``(n, 1)``) or a multi-hot matrix ``(n, c)`` of
    bool / {0, 1} values.
    """
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1 and array.dtype.kind in "iu" and array.max(initial=0) > 1:
        array = array[:, 0]
    if array.ndim == 1:
        if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and np.all(array == np.round(array))):
            raise UserError(f"{name}: class ids must be integers; got dtype {array.dtype}")
        ids = array.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise UserError(f"{name}: class ids must be >= 0; found {ids.min()}")
        classes = int(ids.max()) + 1 if ids.size else 0
        if num_classes is not None:
            if classes > num_classes:
                raise UserError(f"{name}: class id {classes - 1} out of range for {num_classes} classes")
            classes = num_classes
        multi_hot = np.zeros((ids.size, classes), dtype=bool)
        multi_hot[np.arange(ids.size), ids] = True
        return multi_hot
    if array.ndim == 2:
        if array.dtype == bool:
            return array
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UserError(f"{name} contains NaN or infinite values")
        if not np.isin(np.unique(array), (0, 1)).all():
            raise UserError(f"{name}: a multi-hot label matrix must hold only 0 and 1")
        return array.astype(bool)
    raise UserError(f"{name} must be class ids (n,) or multi-hot (n, classes); got shape {array.shape}")
