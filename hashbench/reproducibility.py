"""What "reproduced" means across machines, and the numeric environment a record notes.

numpy picks its SIMD kernels at run time (AVX2 on one x86-64 CPU, AVX-512 on another), and
its vectorised sums and transcendental functions differ between them in the last bits; BLAS
libraries pick CPU-specific kernels too. So hashbench holds two kinds of result to two rules:

- integers (codes, rankings, counts, cut-offs) are equal exactly;
- floating-point metrics are equal within :data:`RELATIVE_TOLERANCE` of the larger magnitude
  (with :data:`ABSOLUTE_TOLERANCE` for values at zero, where a relative bound means nothing).

``hashbench reeval``, the tests and the README's claims use this one rule (:func:`differing`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

RELATIVE_TOLERANCE = 1e-12
ABSOLUTE_TOLERANCE = 1e-15
TOLERANCE_TEXT = f"relative {RELATIVE_TOLERANCE:g}"


def same_value(old: Any, new: Any) -> bool:
    """Whether two recorded values agree: containers item by item, integers and text exactly,
    floats within the tolerance (NaN agrees with NaN)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return old.keys() == new.keys() and all(same_value(old[key], new[key]) for key in old)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(same_value(a, b) for a, b in zip(old, new, strict=True))
    if _is_number(old) and _is_number(new):
        if isinstance(old, int) and isinstance(new, int):
            return old == new
        old, new = float(old), float(new)
        if math.isnan(old) or math.isnan(new):
            return math.isnan(old) and math.isnan(new)
        return math.isclose(old, new, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE)
    return type(old) is type(new) and old == new


def differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The names of the entries of two metric sets that do not agree (:func:`same_value`)."""
    return sorted(name for name in set(old) | set(new) if name not in old or name not in new or not same_value(old[name], new[name]))


def bit_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The entries that agree within the tolerance but are not identical (last-bit changes)."""
    return sorted(name for name in set(old) & set(new) if same_value(old[name], new[name]) and old[name] != new[name])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_environment() -> dict[str, Any]:
    """What decides the last bits of a float on this machine: numpy's SIMD baseline and the
    dispatched extensions in use (after ``NPY_DISABLE_CPU_FEATURES``), and the BLAS library
    with its kernel architecture and threads."""
    info: dict[str, Any] = {}
    try:
        from numpy._core._multiarray_umath import (
            __cpu_baseline__,
            __cpu_dispatch__,
            __cpu_features__,
        )

        info["numpy_simd_baseline"] = list(__cpu_baseline__)
        info["numpy_simd"] = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    except ImportError:  # another numpy layout: the versions in the record still say which numpy
        pass
    disabled = os.environ.get("NPY_DISABLE_CPU_FEATURES")
    if disabled:
        info["npy_disable_cpu_features"] = disabled
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    info["blas"] = [
        {key: pool.get(key) for key in ("internal_api", "version", "architecture", "threading_layer", "num_threads")}
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    ]
    return info
