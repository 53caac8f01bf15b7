"""Labels are multi-hot matrices everywhere in the harness, single-label datasets included."""

from __future__ import annotations

from typing import Any

import numpy as np

from hashbench.errors import UserError

# Class ids become a multi-hot matrix with max id + 1 columns (one byte per item and column).
# Ids that would make one of more than MAX_CLASSES columns, or of more than SPARSE_FROM columns
# of which fewer than one in SPARSE_RATIO is used, are refused: they are a "no label" sentinel
# (0xFFFFFFFF in uint32), ids from another numbering, or hashes, never 0..C-1 class ids, and
# the matrix would take gigabytes to terabytes.
MAX_CLASSES = 1_000_000
SPARSE_FROM = 1_000
SPARSE_RATIO = 10
# Largest values of the usual integer types: a "no label" marker more often than a class.
_SENTINELS = {2**bits - 1: name for bits, name in ((15, "int16"), (16, "uint16"), (31, "int32"), (32, "uint32"), (63, "int64"), (64, "uint64"))}


class LabelError(UserError):
    """Labels a dataset or a file gives that cannot be used as they are (`data check` reports
    them as a labels problem, not as missing files)."""


def _size(count: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


REMAP = "remap them (e.g. numpy.unique(ids, return_inverse=True)[1])"


def class_id_problem(ids: np.ndarray, name: str, unlabelled: str, remap: str = REMAP) -> str | None:
    """Why non-negative integer class ``ids`` cannot become a multi-hot matrix (too many
    columns, or columns almost all empty), or None; checked before anything is allocated.

    ``unlabelled`` says how this input marks items without a label, ``remap`` how to remap
    its ids (for the message)."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return None
    top = int(ids.max())
    columns = top + 1
    if columns <= SPARSE_FROM:
        return None
    distinct = int(np.unique(ids).size)
    if columns <= MAX_CLASSES and columns <= SPARSE_RATIO * distinct:
        return None
    sentinel = _SENTINELS.get(top)
    guess = f"; {top} (0x{top:X}) is the largest {sentinel}, a usual 'no label' marker" if sentinel else ""
    return (
        f"{name}: class ids run up to {top:,} but only {distinct:,} distinct ids occur in {ids.size:,} rows "
        f"(as a multi-hot matrix: {columns:,} classes, {_size(ids.size * columns)}){guess}; class ids must be "
        f"0..C-1: {remap} or give multi-hot labels (N, C), and {unlabelled}"
    )


def check_class_ids(
    array: np.ndarray, name: str, unlabelled: str = "leave unlabelled items out", remap: str = REMAP
) -> np.ndarray:
    """Class ids ``(n,)`` checked (integers, >= 0, not absurdly many or sparse classes) as int64."""
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise LabelError(f"{name}: class ids must be integers; got NaN or infinite values (dtype {array.dtype})")
        if not np.all(array == np.round(array)):
            raise LabelError(f"{name}: class ids must be integers; got dtype {array.dtype}")
    elif array.dtype.kind not in "iu":
        raise LabelError(f"{name}: class ids must be integers; got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise LabelError(f"{name}: class ids must be >= 0; found {array.min()}")
    problem = class_id_problem(array, name, unlabelled, remap)
    if problem is not None:
        raise LabelError(problem)
    return array.astype(np.int64)


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
        ids = check_class_ids(array, name)
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


def _rows(mask: np.ndarray, shown: int = 5) -> str:
    rows = np.flatnonzero(mask)
    text = ", ".join(str(row) for row in rows[:shown])
    return f"{rows.size} rows ({text}{', ...' if rows.size > shown else ''})"


def dataset_labels(labels: Any, where: str, num_classes: int | None = None) -> np.ndarray:
    """A dataset's labels as the bool multi-hot matrix ``(N, classes)`` the harness works on.

    A bool matrix is kept as it is; a matrix of the numbers 0 and 1 becomes bool; class ids
    ``(N,)`` become multi-hot (checked as :func:`to_multi_hot` checks them, over
    ``num_classes`` when given). Anything else is refused naming the rows at fault: NaN or
    infinite values, numbers other than 0 and 1, values that are not numbers. ``where`` names
    the dataset (and its plugin) in the message.
    """
    array = np.asarray(labels)
    if array.ndim == 2 and array.dtype == bool:
        return labels if isinstance(labels, np.ndarray) else array
    if array.ndim == 1:
        return to_multi_hot(array, num_classes, name=f"{where}: labels (class ids)")
    how = (
        "labels must be a multi-hot matrix (N, classes) of 0/1 (bool; an item without a label is a row of zeros) "
        "or class ids (N,)"
    )
    if array.ndim != 2:
        raise LabelError(f"{where}: labels of shape {array.shape}; {how}")
    if array.dtype.kind not in "iuf":
        raise LabelError(f"{where}: labels of dtype {array.dtype} are not numbers; {how}")
    if array.dtype.kind == "f":
        non_finite = ~np.isfinite(array).all(axis=1)
        if non_finite.any():
            raise LabelError(f"{where}: labels hold NaN or infinite values in {_rows(non_finite)}; {how}")
    other = ~((array == 0) | (array == 1)).all(axis=1)
    if other.any():
        raise LabelError(f"{where}: labels hold values other than 0 and 1 in {_rows(other)}; {how}")
    return array.astype(bool)
