"""Conversion between the code formats methods return and the packed form the harness keeps.

Inside the harness codes are bit-packed ``uint8`` arrays of shape ``(n, ceil(bits / 8))``
(``np.packbits(bits01, axis=1)``, big-endian bit order inside each byte, zero padding).
Methods may return ``{0, 1}``, ``{-1, +1}`` or ``bool`` codes as numpy arrays or torch
tensors; an exact zero in a ``{-1, +1}`` code is a bug (a sign of zero) and is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hashbench.errors import UserError


def _to_numpy(codes: Any) -> np.ndarray:
    if hasattr(codes, "detach"):  # torch tensor, on any device
        codes = codes.detach().cpu().numpy()
    return np.asarray(codes)


def to_bits(codes: Any, bits: int | None = None, *, name: str = "codes") -> np.ndarray:
    """Return codes as a bool matrix ``(n, bits)``.

    Accepts bool, ``{0, 1}`` or ``{-1, +1}`` matrices. ``name`` is used in error messages.
    """
    array = _to_numpy(codes)
    if array.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (n, bits); got shape {array.shape}")
    if bits is not None and array.shape[1] != bits:
        raise UserError(f"{name} has {array.shape[1]} bits per row, expected {bits}")
    if array.dtype == bool:
        return array
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{name} contains NaN or infinite values")
    if array.dtype.kind not in "iuf":
        raise UserError(f"{name} has dtype {array.dtype}; expected bool, {{0,1}} or {{-1,+1}}")
    ones = array == 1
    # two passes over the codes instead of np.unique's sort: this runs on every evaluation
    if (ones | (array == 0)).all() or (ones | (array == -1)).all():
        return ones
    values = np.unique(array)
    if np.isin(values, (-1, 0, 1)).all():
        zeros = int((array == 0).sum())
        raise UserError(
            f"{name} mixes -1, 0 and +1 ({zeros} zeros): a zero from sign() is not a bit; "
            "binarise with x >= 0 (or x > 0) instead"
        )
    shown = ", ".join(str(v) for v in values[:5])
    raise UserError(f"{name} must hold only {{0,1}} or {{-1,+1}} values; found {shown}...")


def pack(codes: Any, bits: int | None = None, *, name: str = "codes") -> np.ndarray:
    """Pack codes of any accepted format into ``uint8`` rows of ``ceil(bits / 8)`` bytes."""
    return np.packbits(to_bits(codes, bits, name=name), axis=1)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`: a bool matrix ``(n, bits)``."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise UserError(f"packed codes must be a 2-D uint8 array; got {packed.dtype} {packed.shape}")
    if packed.shape[1] != (bits + 7) // 8:
        raise UserError(
            f"packed codes have {packed.shape[1]} bytes per row; {bits} bits need {(bits + 7) // 8}"
        )
    return np.unpackbits(packed, axis=1, count=bits).astype(bool)
