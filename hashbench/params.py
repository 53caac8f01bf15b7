"""Typed hyperparameters: each method declares a dataclass; overrides are checked against it.

Overrides come from ``--set method.param=value`` (strings) or from a TOML config (typed
values). Both are converted to the field's declared type or refused with a clear message.

A numeric field declares its allowed values in its metadata, and :func:`resolve_params`
enforces them, naming the parameter, the value and the range::

    @dataclass(frozen=True)
    class MyParams:
        lr: float | None = field(default=None, metadata=positive())
        batch_size: int = field(default=64, metadata=at_least(2, "pairs of items", at_most=2**20))
        epochs: int = field(default=10, metadata=at_least(1, at_most=100_000))
        dropout: float = field(default=0.5, metadata=in_range(0, 1, high_open=True))

A count that sets how long a method runs or how much it holds (iterations, epochs, batch
and layer sizes) declares ``at_most`` too, so that a mistyped value is refused at once
instead of running for ever.

Parameter types: ``int``, ``float``, ``bool``, ``str``, ``pathlib.Path`` (kept as its text in
run records), ``Literal[...]``, ``tuple[T, ...]`` of these, and ``T | None``.

Every float parameter must be finite (no nan, inf or -inf) unless its field declares
``non_finite_allowed()``. A ``validate()`` method on the dataclass, when present, runs after
these checks, for rules that relate several fields.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import sys
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
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    return format(value, "g")


def shown(value: Any, limit: int = 24) -> str:
    """``value`` as a message shows it: whole when short, else its ends and its length (a
    400-digit integer is ``99999…99999 (a 400-digit integer)``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            text = str(value)
        except ValueError:  # more digits than Python converts to text
            return f"an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
        digits = len(text.lstrip("-"))
        return text if len(text) <= limit else f"{text[:8]}…{text[-5:]} (a {digits}-digit integer)"
    text = value if isinstance(value, str) else repr(value)
    digits = text.strip().lstrip("+-")
    if isinstance(value, str) and len(text) > limit and digits.isdigit():  # a long integer, as text
        return f"{text.strip()[:8]}…{text.strip()[-5:]} (a {len(digits)}-digit integer)"
    if len(text) <= limit:
        return repr(value) if isinstance(value, str) else text
    head = f"{text[:12]}…{text[-8:]}"
    return f"{head!r} ({len(text)} characters)" if isinstance(value, str) else f"{head} ({len(text)} characters)"


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The allowed values of a numeric parameter; None (left unset) always passes."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    text: str = ""  # the rule in words, after "must": "be positive", "be at least 2", ...
    # The upper bound declared with ``at_most=`` (``in_range`` puts both ends in ``text``):
    # in words, after "must", for a value above it.
    high_text: str = ""

    def describe(self) -> str:
        """The whole range, for a message: ``[0, 100000]``, ``(0, 1)``, ``at least 2``."""
        if self.low is None and self.high is None:
            return self.text.removeprefix("be ")
        if self.low is None:
            return f"at most {_number(self.high)}"
        if self.high is None:
            return self.text.removeprefix("be ").removeprefix("lie in ")
        return f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


# Upper bounds the built-in methods declare (``at_most=``): far above any setting that
# makes sense, low enough that a mistyped value is refused instead of running for ever or
# exhausting memory.
MAX_ITERATIONS = 100_000  # iterations, epochs, epochs between validations or decays
MAX_BATCH_SIZE = 2**20  # items per batch; also neighbours per item
MAX_LAYER_SIZE = 2**16  # units of a hidden layer
MAX_IMAGE_SIZE = 4096  # pixels on an image's side
MAX_THREADS = 4096  # CPU threads


def _declare(bounds: Bounds, why: str, at_most: float | None = None, why_at_most: str = "") -> dict[str, Any]:
    if why:
        bounds = dataclasses.replace(bounds, text=f"{bounds.text} ({why})")
    if at_most is not None:
        if bounds.low is not None and at_most < bounds.low:
            raise ValueError(f"at_most={at_most} is below the lower bound {bounds.low}")
        high_text = f"be at most {_number(at_most)}" + (f" ({why_at_most})" if why_at_most else "")
        bounds = dataclasses.replace(
            bounds, high=at_most, high_text=high_text, text=f"{bounds.text}, {high_text.removeprefix('be ')}"
        )
    return {_BOUNDS: bounds}


def positive(why: str = "", *, at_most: float | None = None, why_at_most: str = "") -> dict[str, Any]:
    """Field metadata: the value must be > 0 (and, given ``at_most``, <= that)."""
    return _declare(Bounds(low=0, low_open=True, text="be positive"), why, at_most, why_at_most)


def non_negative(why: str = "", *, at_most: float | None = None, why_at_most: str = "") -> dict[str, Any]:
    """Field metadata: the value must be >= 0 (and, given ``at_most``, <= that)."""
    return _declare(Bounds(low=0, text="be >= 0"), why, at_most, why_at_most)


def at_least(minimum: float, why: str = "", *, at_most: float | None = None, why_at_most: str = "") -> dict[str, Any]:
    """Field metadata: the value must be >= ``minimum`` (and, given ``at_most``, <= that)."""
    return _declare(Bounds(low=minimum, text=f"be at least {_number(minimum)}"), why, at_most, why_at_most)


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
            if not bounds.high_text:
                raise UserError(f"{where} must {bounds.text}, got {shown(item)}")
            # A declared upper bound: the side the value is on, then the whole range.
            above = bounds.high is not None and item > bounds.high
            rule = bounds.high_text if above else bounds.text.removesuffix(f", {bounds.high_text.removeprefix('be ')}")
            raise UserError(f"{where} must {rule}, got {shown(item)}; give a value in {bounds.describe()}")


def check_params(params: Any, *, owner: str) -> None:
    """Enforce the declared ranges, finiteness, then the dataclass's own ``validate()``."""
    for spec in dataclasses.fields(params):
        _check_field(spec, getattr(params, spec.name), f"{owner}.{spec.name}")
    validate = getattr(params, "validate", None)
    if callable(validate):
        validate()


def _parse_text(text: str, annotation: Any, where: str) -> Any:
    """A ``--set`` value (text) as the value of the type ``annotation`` declares; text that
    does not parse stays text, for the schema to refuse with the expected type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in {"none", "null"} and type(None) in args:
            return None
        options = [option for option in args if option is not type(None)]
        return _parse_text(text, options[0], where) if len(options) == 1 else text
    if origin is Literal:
        return next((choice for choice in args if str(choice) == text), text)
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_parse_text(part.strip(), item, where) for part in text.split(","))
    if annotation is bool:
        lowered = text.lower()
        return lowered in _TRUE if lowered in _TRUE | _FALSE else text
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            digits = text.strip().lstrip("+-").replace("_", "")
            if digits.isdigit():  # more digits than Python reads (4300 by default)
                raise UserError(
                    f"{where}: {shown(text)} is far beyond any sensible value; give a smaller integer "
                    "(`hashbench list METHOD` shows the allowed values)"
                ) from None
            return text
    if annotation is float:
        try:
            number = float(text)
        except ValueError:
            return text
        if math.isinf(number) and "inf" not in text.lower():  # "1e400", a 400-digit number
            raise UserError(f"{where}: {shown(text)} is too large for a number (at most about 1.8e308); give a smaller value")
        return number
    return text  # str, pathlib.Path


_EXPECTED = {
    "int_type": "an integer", "int_from_float": "an integer", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "tuple_type": "a list", "is_instance_of": "a path", "path_type": "a path",
}


@functools.cache
def _adapter(annotation: Any) -> Any:
    """pydantic's strict validator of one parameter type (a path also from its text, as
    TOML and ``--set`` give one; a tuple also from a list)."""
    from typing import Annotated

    from pydantic import ConfigDict, Strict, TypeAdapter

    def loosened(kind: Any) -> Any:
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if isinstance(kind, type) and issubclass(kind, pathlib.PurePath):
            return Annotated[kind, Strict(False)]
        if origin in (typing.Union, types.UnionType):
            return typing.Union[tuple(loosened(arg) for arg in args)]  # noqa: UP007 (built from a tuple)
        if origin is tuple:
            return Annotated[tuple[tuple(loosened(arg) for arg in args)], Strict(False)]  # type: ignore[misc]
        return kind

    return TypeAdapter(loosened(annotation), config=ConfigDict(strict=True))


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """``value`` (a ``--set`` text or a TOML value) as the declared type, checked by the
    parameter's schema (pydantic, strict: no 1 for true, no "2" for 2 in a file)."""
    from pydantic import ValidationError

    if not _supported(annotation):
        raise UserError(f"{where}: unsupported parameter type {annotation!r}")
    if isinstance(value, str):
        value = _parse_text(value, annotation, where)
    if isinstance(value, int) and not isinstance(value, bool) and float in _members(annotation) and abs(value) > sys.float_info.max:
        raise UserError(f"{where}: {shown(value)} is too large for a number (at most about 1.8e308); give a smaller value")
    try:
        checked = _adapter(annotation).validate_python(value)
    except ValidationError as error:
        errors = error.errors()
        first = next((e for e in errors if e["type"] != "none_required"), errors[0])
        if first["type"] == "literal_error":
            choices = typing.get_args(next(a for a in _members(annotation) if typing.get_origin(a) is Literal))
            raise UserError(f"{where}: {value!r} is not one of {', '.join(repr(c) for c in choices)}") from None
        expected = _EXPECTED.get(first["type"], first["msg"].removeprefix("Input should be ").removeprefix("a valid "))
        found = first.get("input", value)
        raise UserError(f"{where}: expected {expected}, got {shown(found)}") from None
    if isinstance(checked, pathlib.PurePath) and not str(value):  # pathlib reads "" as "."
        raise UserError(f"{where}: expected a path, got {shown(value)}")
    return checked


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a parameter may hold: the members of a union (and a tuple's items), or itself."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(member for arg in args for member in _members(arg))
    if origin is tuple:
        return tuple(member for arg in args if arg is not Ellipsis for member in _members(arg))
    return (annotation,)


def _supported(annotation: Any) -> bool:
    """Whether the parameter type is one the schema takes (see the module docstring)."""
    for member in _members(annotation):
        if member in (int, float, bool, str, type(None)) or typing.get_origin(member) is Literal:
            continue
        if isinstance(member, type) and issubclass(member, pathlib.PurePath):
            continue
        return False
    return True


def resolve_params(params_cls: type, overrides: dict[str, Any], *, owner: str) -> Any:
    """Build ``params_cls`` from its defaults and ``overrides``, checking names, types and
    declared ranges (see the module docstring), and that a run record can hold every value."""
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
    check_recordable(params, owner=owner)
    return params


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def params_to_dict(params: Any) -> dict[str, Any]:
    """Resolved hyperparameters as a JSON-able dict (tuples become lists, paths their text)."""
    return {field.name: _plain(getattr(params, field.name)) for field in dataclasses.fields(params)}


def _recordable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and all(_recordable(item) for item in value)


def check_recordable(params: Any, *, owner: str) -> None:
    """Refuse a value that a run record (JSON) cannot hold, before anything is written: a
    plugin's default of another type, say a dict or a set."""
    for name, value in params_to_dict(params).items():
        if not _recordable(value):
            raise UserError(
                f"{owner}.{name}: its value {shown(value)} is a {type(value).__name__}, which a run record cannot hold; "
                "declare the parameter as int, float, bool, str, pathlib.Path, a Literal or a tuple of these"
            )


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
