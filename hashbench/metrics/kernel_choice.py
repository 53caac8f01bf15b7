"""Which CPU kernels rank: the compiled counting kernels (:mod:`hashbench.metrics.counting`,
numba) or the numpy sorts (:mod:`hashbench.metrics.kernels`); the tie-aware terms of the cut
group likewise (compiled, or :mod:`hashbench.metrics.tie_aware` in numpy). Both give the same
values, bit for bit, so the choice only changes the time.

``HASHBENCH_KERNELS`` chooses:

* ``auto`` (default): compiled for an evaluation of at least :data:`MIN_PAIRS` query x
  database pairs, or of any size once the compiled kernels are loaded in this process
  (importing numba and loading the cached kernels costs about a second, which only a large
  evaluation repays); numpy otherwise, and also where numba is missing or a kernel does not
  compile (with a warning for the latter);
* ``numba``: compiled at every size, or an error saying why not;
* ``numpy``: never compiled.

numba caches the compiled kernels on disk (``cache=True``): in ``__pycache__`` next to
counting.py where that folder is writable (an editable install, a user's site-packages),
else in the user's cache folder (``~/.cache/numba``), or where ``NUMBA_CACHE_DIR`` says.
Only the first evaluation after an install or upgrade compiles (several seconds); where no
cache folder is writable at all, each process compiles in memory instead.

numba is imported by the first evaluation that uses it, never by ``import hashbench``.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from hashbench.errors import UserError
from hashbench.metrics.result import Ranking
from hashbench.metrics.tie_aware import Tables, Terms

CHOICES = ("auto", "numba", "numpy")
# Query x database pairs from which ``auto`` loads the compiled kernels: the numpy kernels'
# full evaluation of that many pairs takes about the 0.9 s of CPU that importing numba and
# loading the cached kernels cost (13 ns per pair on a 2-core AMD EPYC, 64-bit codes).
MIN_PAIRS = 2**26

_lock = threading.Lock()
_module: dict[str, Any] = {}  # "counting": the module or None, "reason": why None
_compiled: dict[tuple, bool] = {}  # argument types -> whether the kernel compiled


def choice() -> str:
    """The setting of HASHBENCH_KERNELS (checked)."""
    setting = os.environ.get("HASHBENCH_KERNELS", "").strip().lower() or "auto"
    if setting not in CHOICES:
        shown = setting if len(setting) <= 24 else f"{setting[:12]}…{setting[-8:]}"
        raise UserError(
            f"HASHBENCH_KERNELS must be one of {', '.join(CHOICES)}; got {shown!r}: set it to one of them "
            "(e.g. HASHBENCH_KERNELS=numpy), or unset it for auto"
        )
    return setting


def _refuse_or_warn(reason: str, warn: bool) -> None:
    if choice() == "numba":
        raise UserError(f"HASHBENCH_KERNELS=numba, but the compiled kernels are unavailable: {reason}")
    if warn:
        warnings.warn(
            f"hashbench.metrics: compiled kernels unavailable ({reason}); using the numpy "
            "kernels (same values, slower)",
            RuntimeWarning,
            stacklevel=2,
        )


def _load() -> ModuleType | None:
    """:mod:`hashbench.metrics.counting` (importing numba), or None where it does not import."""
    with _lock:
        if "counting" not in _module:
            try:
                from hashbench.metrics import counting
            except ImportError as error:  # numba (or llvmlite) missing or broken
                _module.update(counting=None, reason=f"numba does not import ({error})")
            except Exception as error:  # noqa: BLE001 - any failure here means: use numpy
                _module.update(counting=None, reason=f"{type(error).__name__}: {error}")
            else:
                _module.update(counting=counting, reason="")
    if _module["counting"] is None:
        _refuse_or_warn(_module["reason"], warn=False)  # numba missing is a documented fallback
    return _module["counting"]


def enabled(pairs: int) -> bool:
    """Whether an evaluation of ``pairs`` query x database pairs ranks with the compiled
    kernels (see the module's docstring); loads them when it does."""
    setting = choice()
    if setting == "numpy":
        return False
    if setting == "auto" and pairs < MIN_PAIRS and _module.get("counting") is None:
        return False
    return _load() is not None


def _ready(kernel: Any, args: tuple) -> bool:
    """Compile (or load from numba's cache) ``kernel`` for these argument types; False, with
    a warning, when that fails."""
    import numba

    key = (getattr(kernel, "__name__", repr(kernel)), *(numba.typeof(arg) for arg in args))
    if key not in _compiled:
        with _lock:
            if key not in _compiled:
                try:
                    kernel.compile(key[1:])
                    _compiled[key] = True
                except Exception as error:  # noqa: BLE001 - a compiler failure must not end the run
                    _compiled[key] = False
                    _refuse_or_warn(f"{type(error).__name__}: {error}", warn=True)
    return _compiled[key]


def _run(
    query_words: np.ndarray,
    database_words: np.ndarray,
    bit_rows: np.ndarray,
    bits: int,
    map_k: int,
    ks: Sequence[int],
    whole: bool,
) -> Ranking | None:
    counting = _load()
    size = database_words.shape[0]
    if counting is None or size > counting.MAX_SIZE:
        return None
    count = query_words.shape[0]
    groups = bits + 1
    ks_array = np.asarray(ks, dtype=np.int64).reshape(-1)
    outputs = (
        np.zeros((count, groups), dtype=np.int64),  # counts
        np.zeros((count, groups), dtype=np.int64),  # relevant counts
        np.zeros(count),  # ap
        np.zeros(count),  # ap_all
        np.zeros((count, ks_array.size), dtype=np.int64),  # r_at_k
    )
    args = (
        np.ascontiguousarray(query_words),
        np.ascontiguousarray(database_words),
        np.ascontiguousarray(bit_rows),
        np.int64(map_k),
        ks_array,
        bool(whole),
        np.arange(1, size + 1, dtype=np.float64),  # ranks
        np.empty(size, dtype=np.uint64),  # records of the relevant items
        np.empty(size, dtype=np.int32),  # positions
        np.empty(size),  # precision
        np.empty((3, groups), dtype=np.uint64),  # per-distance tables
        *outputs,
    )
    if not _ready(counting.rank_chunk, args):
        return None
    counting.rank_chunk(*args)
    return Ranking(*outputs)


def whole_ranking(
    query_words: np.ndarray,
    database_words: np.ndarray,
    bit_rows: np.ndarray,
    bits: int,
    map_k: int,
    ks: Sequence[int],
) -> Ranking | None:
    """What :func:`hashbench.metrics.kernels.whole_ranking` gives for a chunk of queries
    (their packed code words and relevance bit rows), or None: use the numpy kernels."""
    return _run(query_words, database_words, bit_rows, bits, map_k, ks, whole=True)


def head_average_precision(
    query_words: np.ndarray,
    database_words: np.ndarray,
    bit_rows: np.ndarray,
    bits: int,
    map_k: int,
) -> np.ndarray | None:
    """AP@map_k per query (ties by database index), ranking only the items within the
    distance that holds rank map_k; or None: use the numpy kernels."""
    ranking = _run(query_words, database_words, bit_rows, bits, map_k, (), whole=False)
    return None if ranking is None else ranking.ap


def boundary_terms(
    low: np.ndarray,
    high: np.ndarray,
    size_b: np.ndarray,
    relevant_b: np.ndarray,
    taken: np.ndarray,
    before_b: np.ndarray,
    relevant_before_b: np.ndarray,
    expected_full: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    tables: Tables,
) -> Terms | None:
    """What :func:`hashbench.metrics.tie_aware._boundary_terms` gives, computed by the
    compiled kernels (with numpy's exp in between, so that every value is numpy's), or None:
    use numpy."""
    counting = _load()
    if counting is None:
        return None
    integers = [
        np.ascontiguousarray(array, dtype=np.int64)
        for array in (low, high, size_b, relevant_b, taken, before_b, relevant_before_b)
    ]
    low, high, size_b, relevant_b, taken, before_b, relevant_before_b = integers
    log_p = np.empty(int((high - low + 1).sum()))
    first_args = (low, high, size_b, relevant_b, taken, tables.log_factorial, log_p)
    count = low.size
    outputs = (np.empty(count), np.empty(count), np.empty(count))
    second_args = (
        log_p,
        low,
        high,
        taken,
        before_b,
        relevant_before_b,
        *(np.ascontiguousarray(a, dtype=np.float64) for a in (expected_full, first, last)),
        tables.harmonic,
        *outputs,
    )
    if not (
        _ready(counting.boundary_log_probabilities, first_args)
        and _ready(counting.boundary_values, second_args)
    ):
        return None
    counting.boundary_log_probabilities(*first_args)
    np.exp(log_p, out=log_p)  # numpy's exp, as the numpy path takes it
    counting.boundary_values(*second_args)
    return outputs
