"""Typed hyperparameters: each method declares a dataclass; overrides are checked against it.

Overrides come from ``--set method.param=value`` (strings) or from a TOML config (typed
values). Both are converted to the field's declared type or refused with a clear message.

A numeric field declares its allowed values in its metadata, and :func:`resolve_params`
enforces them, naming the parameter, the value and the range::

    @dataclass(frozen=True)
    class MyParams:
        lr: float | None = field(default=None, metadata=positive())
        batch_size: int = field(default=64, metadata=at_least(2, "pairs of items"))
        dropout: float = field(default=0.5, metadata=in_range(0, 1, high_open=True))

Every float parameter must be finite (no nan, inf or -inf) unless its field declares
``non_finite_allowed()``. A ``validate()`` method on the dataclass, when present, runs after
these checks, for rules that relate several fields.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from hashbench.errors import UserError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclasses.dataclass(frozen=True)
class NoParams:
    """For methods without hyperparameters."""


# --------------------------------------------------------------------------------------------
# declared ranges

_BOUNDS = "bounds"
_FINITE = "finite"


def _number(value: float) -> str:
    return format(value, "g")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The allowed values of a numeric parameter; None (left unset) always passes."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    text: str = ""  # the rule in words, after "must": "be positive", "be at least 2", ...

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def _declare(bounds: Bounds, why: str) -> dict[str, Any]:
    if why:
        bounds = dataclasses.replace(bounds, text=f"{bounds.text} ({why})")
    return {_BOUNDS: bounds}


def positive(why: str = "") -> dict[str, Any]:
    """Field metadata: the value must be > 0."""
    return _declare(Bounds(low=0, low_open=True, text="be positive"), why)


def non_negative(why: str = "") -> dict[str, Any]:
    """Field metadata: the value must be >= 0."""
    return _declare(Bounds(low=0, text="be >= 0"), why)


def at_least(minimum: float, why: str = "") -> dict[str, Any]:
    """Field metadata: the value must be >= ``minimum``."""
    return _declare(Bounds(low=minimum, text=f"be at least {_number(minimum)}"), why)


def in_range(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False, why: str = ""
) -> dict[str, Any]:
    """Field metadata: the value must lie between ``low`` and ``high`` (closed unless opened)."""
    text = f"lie in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    return _declare(Bounds(low, high, low_open, high_open, text), why)


def non_finite_allowed() -> dict[str, Any]:
    """Field metadata: a float parameter that may be nan, inf or -inf (refused otherwise).

    Combine with a range with ``|``: ``metadata=at_least(0) | non_finite_allowed()``.
    """
    return {_FINITE: False}


def declared_range(spec: dataclasses.Field) -> Bounds | None:
    """The range a dataclass field declares, if any."""
    return spec.metadata.get(_BOUNDS)


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, tuple):
        return [item for item in value if isinstance(item, float)]
    return []


def _check_field(spec: dataclasses.Field, value: Any, where: str) -> None:
    if spec.metadata.get(_FINITE, True):
        for number in _floats(value):
            if not math.isfinite(number):
                raise UserError(f"{where} must be a finite number, got {number}")
    bounds = declared_range(spec)
    if bounds is None or value is None:
        return
    for item in value if isinstance(value, tuple) else (value,):  # a tuple: each of its items
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not bounds.admits(item):
            raise UserError(f"{where} must {bounds.text}, got {item}")


def check_params(params: Any, *, owner: str) -> None:
    """Enforce the declared ranges, finiteness, then the dataclass's own ``validate()``."""
    for spec in dataclasses.fields(params):
        _check_field(spec, getattr(params, spec.name), f"{owner}.{spec.name}")
    validate = getattr(params, "validate", None)
    if callable(validate):
        validate()


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in args:
                return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except UserError as error:
                errors.append(str(error))
        raise UserError(errors[0] if errors else f"{where}: cannot convert {value!r}")
    if origin is Literal:
        choices = args
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise UserError(f"{where}: {value!r} is not one of {', '.join(repr(c) for c in choices)}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else str
        return tuple(_convert(item.strip() if isinstance(item, str) else item, item_type, where) for item in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, got {value!r}")
    raise UserError(f"{where}: unsupported parameter type {annotation!r}")


def resolve_params(params_cls: type, overrides: dict[str, Any], *, owner: str) -> Any:
    """Build ``params_cls`` from its defaults and ``overrides``, checking names, types and
    declared ranges (see the module docstring)."""
    hints = typing.get_type_hints(params_cls)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    values: dict[str, Any] = {}
    for name, raw in overrides.items():
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise UserError(f"unknown parameter {owner}.{name}; {owner} has: {known}")
        values[name] = _convert(raw, hints[name], f"{owner}.{name}")
    try:
        params = params_cls(**values)
    except (TypeError, ValueError) as error:
        raise UserError(f"invalid parameters for {owner}: {error}") from error
    check_params(params, owner=owner)
    return params


def params_to_dict(params: Any) -> dict[str, Any]:
    """Resolved hyperparameters as a JSON-able dict (tuples become lists)."""
    result = {}
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        result[field.name] = list(value) if isinstance(value, tuple) else value
    return result


def parse_assignments(assignments: tuple[str, ...] | list[str]) -> dict[str, dict[str, str]]:
    """``["itq.iterations=20", ...]`` → ``{"itq": {"iterations": "20"}}``."""
    overrides: dict[str, dict[str, str]] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        owner, dot, name = key.strip().partition(".")
        if not sep or not dot or not owner or not name:
            raise UserError(f"--set {item!r}: expected METHOD.PARAM=VALUE, e.g. --set itq.iterations=50")
        overrides.setdefault(owner, {})[name] = value.strip()
    return overrides
