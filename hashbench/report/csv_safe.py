"""Spreadsheet-safe CSV: every CSV hashbench writes goes through :func:`to_csv`.

A spreadsheet runs a cell whose text starts with ``=``, ``+``, ``-`` or ``@`` (and, in some,
a tab or a carriage return) as a formula, so text taken from a published-numbers file, a
run record or a plugin (a source, an error message, a device, a metric's name) could run
when the CSV is opened. As spreadsheet-safe exporters do (OWASP, "CSV Injection"), such a
cell gets a leading ``'``, which the spreadsheet shows as text; the rest of the text is kept.
Numbers are left as they are, also a text cell that reads as a plain number (``-0.5``,
``-1e-3``), and so are the header and the index, which go through the same rule.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

# Cells a spreadsheet would run as a formula (OWASP's list for CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A plain decimal number, as a spreadsheet reads one: left unquoted even where it is text.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def defuse(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula;
    anything else (numbers, empty text, text that is a plain number) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _defuse_labels(index: pd.Index) -> pd.Index:
    """A header or an index with each label (each level's, for a MultiIndex) and each name defused."""
    names = [defuse(name) for name in index.names]
    multi = isinstance(index, pd.MultiIndex)
    labels = [tuple(defuse(part) for part in label) if multi else defuse(label) for label in index]
    if labels == list(index) and names == list(index.names):
        return index  # nothing to quote: keep the index as it is (a RangeIndex stays one)
    if multi:
        return pd.MultiIndex.from_tuples(labels, names=names)
    return pd.Index(labels, name=names[0], dtype=object)


def defuse_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with every text cell, column label and index label defused;
    numeric, boolean and date columns are left as they are."""
    safe = frame.copy()
    for position in range(safe.shape[1]):
        column = safe.iloc[:, position]
        dtype = column.dtype
        if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
            continue
        safe.isetitem(position, column.astype(object).map(defuse))
    safe.columns = _defuse_labels(safe.columns)
    safe.index = _defuse_labels(safe.index)
    return safe


def to_csv(frame: pd.DataFrame, *, index: bool = False, **options: Any) -> str:
    """``frame.to_csv(index=index, **options)`` with every text cell, header and index value
    safe to open in a spreadsheet (see the module docstring)."""
    return defuse_frame(frame).to_csv(index=index, **options)


__all__ = ["FORMULA_STARTS", "defuse", "defuse_frame", "to_csv"]
