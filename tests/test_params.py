"""Declared parameter ranges: the helpers, finiteness, and every built-in method's parameters."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

import pytest

from hashbench import registry
from hashbench.errors import UserError
from hashbench.params import (
    at_least,
    check_params,
    declared_range,
    in_range,
    non_finite_allowed,
    non_negative,
    positive,
    resolve_params,
)


@dataclass(frozen=True)
class Example:
    rate: float | None = field(default=None, metadata=positive())
    count: int = field(default=4, metadata=at_least(2, "pairs of items"))
    share: float = field(default=0.5, metadata=in_range(0, 1, high_open=True))
    weight: float = field(default=0.0, metadata=non_negative())
    scale: float = 1.0  # no range: any finite number
    limit: float = field(default=float("inf"), metadata=at_least(0) | non_finite_allowed())
    pair: tuple[float, ...] = (0.1, 0.2)
    sizes: tuple[int, ...] = field(default=(1, 2), metadata=at_least(1))

    def validate(self) -> None:
        if self.rate is not None and self.scale == 0:
            raise UserError("example.rate needs a non-zero scale")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rate": "0"}, "example.rate must be positive, got 0.0"),
        ({"rate": "-1e-3"}, "example.rate must be positive, got -0.001"),
        ({"count": "1"}, r"example.count must be at least 2 \(pairs of items\), got 1"),
        ({"share": "1"}, r"example.share must lie in \[0, 1\), got 1.0"),
        ({"share": "-0.1"}, r"example.share must lie in \[0, 1\), got -0.1"),
        ({"weight": "-2"}, "example.weight must be >= 0, got -2.0"),
        ({"limit": "-1"}, "example.limit must be at least 0, got -1.0"),
        ({"sizes": "3,0"}, "example.sizes must be at least 1, got 0"),
        ({"scale": "nan"}, "example.scale must be a finite number, got nan"),
        ({"rate": "inf"}, "example.rate must be a finite number, got inf"),
        ({"pair": "0.1,-inf"}, "example.pair must be a finite number, got -inf"),
        ({"rate": "1", "scale": "0"}, "example.rate needs a non-zero scale"),  # validate() still runs
    ],
)
def test_declared_ranges_are_enforced_with_the_parameter_value_and_range(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_params(Example, overrides, owner="example")


def test_bounds_admit_their_edges_and_none_means_the_default():
    params = resolve_params(
        Example, {"rate": "1e-9", "count": "2", "share": "0", "weight": "0", "limit": "inf"}, owner="example"
    )
    assert (params.rate, params.count, params.share, params.weight, params.limit) == (1e-9, 2, 0.0, 0.0, float("inf"))
    assert resolve_params(Example, {"rate": "none"}, owner="example").rate is None
    resolve_params(Example, {"limit": float("nan")}, owner="example")  # typed values too; allowed here
    with pytest.raises(UserError, match="must be a finite number"):
        resolve_params(Example, {"scale": float("-inf")}, owner="example")


def test_check_params_applies_to_a_dataclass_built_directly():
    with pytest.raises(UserError, match="example.share must lie in"):
        check_params(Example(share=2.0), owner="example")


# --------------------------------------------------------------------------------------------
# every built-in method


def _builtin_methods() -> list[str]:
    names = [name for name in registry.methods.names() if registry.get_method(name).__module__.startswith("hashbench.methods.")]
    assert {"lsh", "itq", "cibhash", "clhash", "tbh", "bgan", "greedyhash", "bihalf"} <= set(names)
    return names


def _numeric_fields(name: str) -> list[tuple[dataclasses.Field, set[type]]]:
    params_cls = registry.get_method(name).Params
    hints = typing.get_type_hints(params_cls)
    result = []
    for item in dataclasses.fields(params_cls):
        hint = hints[item.name]
        options = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
        numeric = options & {int, float}
        if numeric:
            result.append((item, numeric))
    return result


FLOAT_PARAMS = [(name, item.name) for name in _builtin_methods() for item, kinds in _numeric_fields(name) if float in kinds]
NUMERIC_PARAMS = [(name, item) for name in _builtin_methods() for item, _ in _numeric_fields(name)]


def test_the_deep_methods_have_float_parameters_to_check():
    assert {("cibhash", "tau"), ("tbh", "lr"), ("bgan", "width"), ("bihalf", "feature_dropout")} <= set(FLOAT_PARAMS)


@pytest.mark.parametrize(("method", "param"), FLOAT_PARAMS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), float("inf"), float("-inf")])
def test_every_float_parameter_refuses_non_finite_values(method, param, value):
    with pytest.raises(UserError, match=rf"^{method}\.{param} must be a finite number, got (nan|inf|-inf)$"):
        resolve_params(registry.get_method(method).Params, {param: value}, owner=method)


@pytest.mark.parametrize(("method", "item"), NUMERIC_PARAMS, ids=[f"{m}.{f.name}" for m, f in NUMERIC_PARAMS])
def test_every_numeric_parameter_of_a_builtin_method_declares_its_range(method, item):
    assert declared_range(item) is not None, f"{method}.{item.name} declares no range (params.positive(), at_least(), ...)"


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("cibhash", {"tau": "0"}, r"cibhash.tau must be positive, got 0.0"),
        ("clhash", {"batch_size": "1"}, r"clhash.batch_size must be at least 2 \(NT-Xent needs negatives\), got 1"),
        ("tbh", {"exponent": "-1"}, r"tbh.exponent must be positive, got -1.0"),
        ("tbh", {"cpu_threads": "0"}, r"tbh.cpu_threads must be at least 1, got 0"),
        ("bgan", {"image_size": "3"}, r"bgan.image_size must be at least 4, got 3"),
        ("bgan", {"kl_weight": "-1"}, r"bgan.kl_weight must be >= 0, got -1.0"),
        ("greedyhash", {"alpha": "-0.5"}, r"greedyhash.alpha must be >= 0, got -0.5"),
        ("bihalf", {"feature_dropout": "1"}, r"bihalf.feature_dropout must lie in \[0, 1\), got 1.0"),
        ("itq", {"iterations": "-1"}, r"itq.iterations must be >= 0, got -1"),
        ("bgan", {"backbone_weights": "w.pth", "pretrained": "false"}, "bgan.backbone_weights and pretrained=false contradict"),
        ("clhash", {"backbone_weights": "w.pth", "pretrained": "false"}, "clhash.backbone_weights and pretrained=false contradict"),
    ],
)
def test_method_parameters_are_refused_naming_the_method(method, overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_params(registry.get_method(method).Params, overrides, owner=method)
