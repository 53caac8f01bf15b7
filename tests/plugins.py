"""Method plugins used by the tests (loaded with --plugin tests/plugins.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from hashbench.method import HashingMethod
from hashbench.registry import register_method


@register_method
class Exploding(HashingMethod):
    """Fails in fit, to test that one failing cell does not stop the grid."""

    name = "exploding"
    description = "raises in fit"

    def fit(self, train, val=None):
        raise RuntimeError("this method always fails")

    def encode(self, split):
        raise AssertionError("never reached")


@register_method
class ZeroSign(HashingMethod):
    """Returns sign() output containing exact zeros, which the harness must refuse."""

    name = "zerosign"
    description = "returns {-1, 0, +1} codes"

    def fit(self, train, val=None):
        pass

    def encode(self, split):
        codes = np.sign(split.features[:, : self.bits] - 0.5)
        codes[0, 0] = 0
        return codes


@register_method
class Slow(HashingMethod):
    """Signals that it started (a marker file), then sleeps: killed midway by the tests.

    The sleep comes from the environment, not from a parameter, so that the killed run and
    its resumption have the same run key.
    """

    name = "slow"
    description = "sleeps in fit"

    def fit(self, train, val=None):
        marker = os.environ.get("HASHBENCH_TEST_MARKER")
        if marker:
            Path(marker).write_text("fitting")
        time.sleep(float(os.environ.get("HASHBENCH_TEST_SLEEP", "0")))
        self.projection = self.context.rng().standard_normal((train.features.shape[1], self.bits))

    def encode(self, split):
        return (split.features - 0.5) @ self.projection >= 0
