"""Every registered method passes the conformance suite (`hashbench check-method`), and the
suite itself catches a method that breaks the API."""

from __future__ import annotations

import numpy as np
import pytest

from hashbench import registry
from hashbench.conformance import assert_conforms, check_method
from hashbench.method import HashingMethod

BUILT_IN = [
    "agh", "bgan", "bihalf", "cibhash", "clhash", "deepbit", "dsch", "greedyhash", "imh", "itq", "lsh", "mls3rduh",
    "nsh", "pcah", "sdc", "sgh", "sh", "sph", "ssdh", "tbh", "uhbdnn", "wch",
]  # fmt: skip


def test_every_built_in_method_is_registered():
    assert set(BUILT_IN) <= set(registry.methods.names())


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_method_conforms(name):
    assert_conforms(name)


class _Careless(HashingMethod):
    """Breaks the API in three ways: no version, random codes, no guard before fit."""

    name = "careless"
    description = "random codes"
    version = ""

    def fit(self, train, val=None):
        pass

    def encode(self, split):
        return np.random.default_rng().random((len(split), self.bits)) > 0.5


def test_the_suite_reports_each_broken_rule():
    results = {result.name: result for result in check_method(_Careless)}
    failed = {name for name, result in results.items() if not result.passed}
    assert failed == {"declaration", "encode before fit", "determinism"}
    assert "version must be a non-empty string" in results["declaration"].detail


def test_check_method_cli(invoke):
    result = invoke("check-method", "lsh,itq")
    assert result.exit_code == 0, result.output
    assert "ok   determinism" in result.output and "FAIL" not in result.output
    result = invoke("check-method", "lshh")
    assert result.exit_code == 2 and "unknown method 'lshh'" in result.output
