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
import math
import pathlib
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
            raise UserError(f"{where}: expected an integer, got {shown(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                digits = value.strip().lstrip("+-").replace("_", "")
                if digits.isdigit():  # more digits than Python reads (4300 by default)
                    raise UserError(
                        f"{where}: {shown(value)} is far beyond any sensible value; give a smaller integer "
                        "(`hashbench list METHOD` shows the allowed values)"
                    ) from None
        raise UserError(f"{where}: expected an integer, got {shown(value)}")
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {shown(value)}")
        if isinstance(value, int):
            try:
                return float(value)
            except OverflowError:
                raise UserError(f"{where}: {shown(value)} is too large for a number (at most about 1.8e308); give a smaller value") from None
        if isinstance(value, float):
            return value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isinf(number) and "inf" not in value.lower():  # "1e400", a 400-digit number
                    raise UserError(
                        f"{where}: {shown(value)} is too large for a number (at most about 1.8e308); give a smaller value"
                    )
                return number
        raise UserError(f"{where}: expected a number, got {shown(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, got {shown(value)}")
    if isinstance(annotation, type) and issubclass(annotation, pathlib.PurePath):
        if isinstance(value, pathlib.PurePath):
            return annotation(value)
        if isinstance(value, str) and value:
            return annotation(value)
        raise UserError(f"{where}: expected a path, got {shown(value)}")
    raise UserError(f"{where}: unsupported parameter type {annotation!r}")



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
