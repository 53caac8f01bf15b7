"""Labels are multi-hot matrices everywhere in the harness, single-label datasets included."""

from __future__ import annotations

from typing import Any

import numpy as np

from hashbench.errors import UserError


def check_label_shape(array: np.ndarray, name: str = "labels") -> None:
    """Refuse label arrays that are neither class ids ``(n,)`` nor multi-hot ``(n, C >= 2)``.

    One column is ambiguous: class ids in a column, or a multi-hot matrix of one class. The
    two readings disagree on items labelled 0 (a class of their own, or no label at all, so
    never relevant), and no rule on the values can tell them apart, so it is never guessed.
    """
    if array.ndim == 2 and array.shape[1] == 1:
        raise UserError(
            f"{name} have shape {array.shape}, which is ambiguous: one column could be class ids "
            "(items labelled 0 form class 0) or a one-class multi-hot matrix (items labelled 0 "
            "have no label and are never relevant); pass class ids as a vector of shape (n,) "
            "(e.g. labels[:, 0]), or multi-hot labels as a matrix of shape (n, C) with C >= 2 "
            "(e.g. add a column of zeros)"
        )
    if array.ndim not in (1, 2):
        raise UserError(
            f"{name} must be class ids (n,) or multi-hot (n, classes); got shape {array.shape}"
        )


def to_multi_hot(labels: Any, num_classes: int | None = None, *, name: str = "labels") -> np.ndarray:
    """Return labels as a bool matrix ``(n, classes)``.

    Accepts integer class ids ``(n,)`` or a multi-hot matrix ``(n, C)`` of bool / {0, 1}
    values with ``C >= 2``; a single column is refused as ambiguous (see
    :func:`check_label_shape`).
    """
    array = np.asarray(labels)
    check_label_shape(array, name)
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
    if array.dtype == bool:
        return array
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{name} contains NaN or infinite values")
    if not np.isin(np.unique(array), (0, 1)).all():
        raise UserError(f"{name}: a multi-hot label matrix must hold only 0 and 1")
    return array.astype(bool)
