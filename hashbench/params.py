"""Typed hyperparameters: each method declares a dataclass; overrides are checked against it.

Overrides come from ``--set method.param=value`` (strings) or from a TOML config (typed
values). Both are converted to the field's declared type or refused with a clear message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from hashbench.errors import UserError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclasses.dataclass(frozen=True)
class NoParams:
    """For methods without hyperparameters."""


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
    """Build ``params_cls`` from its defaults and ``overrides``, checking names and types."""
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
    validate = getattr(params, "validate", None)
    if callable(validate):
        validate()
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
