"""One suite every hashing method must pass (as scikit-learn's ``check_estimator``).

Run it on any registered method, a plugin's included::

    hashbench check-method NAME                       # from the command line
    hashbench --plugin my_hashing.py check-method median

    from hashbench.conformance import assert_conforms  # in a plugin's own tests
    assert_conforms(MyMethod)

The checks train for real on a small slice of the embedded ``digits`` dataset (its 64 pixel
features, or its 8×8 images for image methods), with ``epochs`` and ``eval_every`` cut down
when the method has them, so the whole suite takes seconds per method:

* declaration: a name, a description, an input kind, a version, typed ``Params``;
* params round-trip through the run record (JSON) to equal parameters and the same run key;
* impossible bit counts (0, negative, fractional, bool) refused with a ``UserError``, and a
  bit count beyond what the input supports either works or is refused with one;
* ``encode`` before ``fit`` raises (``NotFittedError`` or another ``RuntimeError``);
* codes of every split: one row per item, ``bits`` columns, only {0,1}, {-1,+1} or bool;
* determinism: the same seed gives the same codes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hashbench import registry
from hashbench.codes import pack
from hashbench.data import DatasetArrays, DataSplit
from hashbench.environment import seed_everything
from hashbench.errors import UserError
from hashbench.method import FAMILIES, HashingMethod, RunContext
from hashbench.params import params_to_dict, resolve_params
from hashbench.storage.records import CellIdentity

# Settings that shorten training without changing what is trained.
QUICK = {"epochs": 2, "eval_every": 1}
BITS = 16
# Slices of digits' canonical order (mixed classes): train, val, query, database.
SLICES = {"train": (0, 120), "val": (120, 160), "query": (160, 190), "database": (190, 390)}


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


def quick_overrides(method_cls: type[HashingMethod]) -> dict[str, Any]:
    """``epochs`` / ``eval_every`` cut down, for the parameters the method has."""
    names = {f.name for f in dataclasses.fields(method_cls.Params)}
    return {name: value for name, value in QUICK.items() if name in names}


def small_splits() -> dict[str, DataSplit]:
    arrays = registry.get_dataset("digits")().load(None)
    arrays = DatasetArrays(
        labels=arrays.labels, images=arrays.images, features=arrays.features, dataset="digits", provenance={}
    )
    return {name: DataSplit(name, np.arange(*bounds), arrays) for name, bounds in SLICES.items()}


def _fit_and_encode(method_cls, params, bits: int, splits: dict[str, DataSplit], seed: int = 0) -> dict[str, np.ndarray]:
    seed_everything(seed)
    method = method_cls(bits, params, RunContext(seed=seed))
    method.fit(splits["train"], splits["val"])
    return {name: method.encode(splits[name]) for name in ("query", "database")}


def _check_declaration(method_cls, params, splits) -> str:
    problems = []
    for attribute in ("name", "description", "version"):
        value = getattr(method_cls, attribute, None)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{attribute} must be a non-empty string, got {value!r}")
    if getattr(method_cls, "input", None) not in ("features", "images"):
        problems.append(f"input must be 'features' or 'images', got {getattr(method_cls, 'input', None)!r}")
    if getattr(method_cls, "family", "other") not in FAMILIES:
        problems.append(f"family must be one of {', '.join(FAMILIES)}, got {getattr(method_cls, 'family', None)!r}")
    if not dataclasses.is_dataclass(method_cls.Params):
        problems.append("Params must be a dataclass")
    if problems:
        raise AssertionError("; ".join(problems))
    return f"{method_cls.name} version {method_cls.version}, input {method_cls.input}, family {method_cls.family}"


def _check_params_round_trip(method_cls, params, splits) -> str:
    stored = json.loads(json.dumps(params_to_dict(params)))
    again = resolve_params(method_cls.Params, stored, owner=method_cls.name)
    if again != params:
        raise AssertionError(f"parameters read back from the record differ: {again!r} != {params!r}")
    keys = [CellIdentity(method_cls.name, params_to_dict(p), "digits", "standard", 0, BITS, 0).key("1", "1") for p in (params, again)]
    if keys[0] != keys[1]:
        raise AssertionError("the run key changes when the parameters go through the record")
    return "parameters survive the record unchanged"


def _check_refuses_bad_bits(method_cls, params, splits) -> str:
    for bits in (0, -3, 2.5, True, "16"):
        try:
            method_cls(bits, params)
        except UserError:
            continue
        except Exception as error:  # noqa: BLE001 (the check reports any other error)
            raise AssertionError(f"bits={bits!r} raised {type(error).__name__}, not a UserError: {error}") from None
        raise AssertionError(f"bits={bits!r} was accepted")
    split = splits["train"]
    dimension = split.features.shape[1]
    bits = 4 * dimension  # more bits than the 64 input dimensions
    try:
        if method_cls.input == "features":
            method_cls(bits, params).check_input(dimension)
        codes = _fit_and_encode(method_cls, params, bits, splits)
        pack(codes["query"], bits, name="codes")
    except UserError as error:
        return f"{bits} bits on {dimension}-d input refused: {error}"
    return f"{bits} bits on {dimension}-d input work"


def _check_encode_before_fit(method_cls, params, splits) -> str:
    method = method_cls(BITS, params, RunContext())
    try:
        method.encode(splits["query"])
    except RuntimeError as error:
        return f"{type(error).__name__}: {error}"
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"encode before fit raised {type(error).__name__} ({error}), not NotFittedError") from None
    raise AssertionError("encode before fit returned codes")


def _check_codes(method_cls, params, splits) -> str:
    codes = _fit_and_encode(method_cls, params, BITS, splits)
    for name, value in codes.items():
        packed = pack(value, BITS, name=f"{name} codes")  # refuses zeros, NaN and other values
        if packed.shape != (len(splits[name]), -(-BITS // 8)):
            raise AssertionError(f"{name} codes have {packed.shape[0]} rows for {len(splits[name])} items")
        shape = np.shape(value)
        if len(shape) != 2 or shape[1] != BITS:
            raise AssertionError(f"{name} codes have shape {shape}, expected ({len(splits[name])}, {BITS})")
    return f"{BITS}-bit codes for query and database"


def _check_determinism(method_cls, params, splits) -> str:
    first = _fit_and_encode(method_cls, params, BITS, splits, seed=7)
    second = _fit_and_encode(method_cls, params, BITS, splits, seed=7)
    for name in first:
        if not np.array_equal(pack(first[name], BITS), pack(second[name], BITS)):
            raise AssertionError(f"two fits with seed 7 gave different {name} codes")
    return "the same seed gives the same codes"


CHECKS: dict[str, Callable[..., str]] = {
    "declaration": _check_declaration,
    "params round-trip": _check_params_round_trip,
    "refuses impossible bit counts": _check_refuses_bad_bits,
    "encode before fit": _check_encode_before_fit,
    "codes shape and values": _check_codes,
    "determinism": _check_determinism,
}


def check_method(method: str | type[HashingMethod], overrides: dict[str, Any] | None = None) -> list[CheckResult]:
    """Run every check on ``method`` (a registered name or a class); never raises for a
    failing check."""
    method_cls = registry.get_method(method) if isinstance(method, str) else method
    values = {**quick_overrides(method_cls), **(overrides or {})}
    params = resolve_params(method_cls.Params, values, owner=getattr(method_cls, "name", "method"))
    splits = small_splits()
    results = []
    for name, check in CHECKS.items():
        try:
            results.append(CheckResult(name, True, check(method_cls, params, splits)))
        except Exception as error:  # noqa: BLE001 (every failure is reported, the suite goes on)
            detail = str(error) if isinstance(error, AssertionError) else f"{type(error).__name__}: {error}"
            results.append(CheckResult(name, False, detail))
    return results


def assert_conforms(method: str | type[HashingMethod], overrides: dict[str, Any] | None = None) -> None:
    """For a plugin's tests: raise AssertionError listing every failed check."""
    failed = [result for result in check_method(method, overrides) if not result.passed]
    if failed:
        raise AssertionError("; ".join(f"{result.name}: {result.detail}" for result in failed))
