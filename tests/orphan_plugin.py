"""A method plugin for the orphaned-worker test (loaded with --plugin tests/orphan_plugin.py).

Its behaviour comes from the environment, not from parameters, so the run keys stay fixed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hashbench.method import HashingMethod
from hashbench.registry import register_method


@register_method
class PidSleeper(HashingMethod):
    """Writes its process id into the folder HASHBENCH_TEST_MARKER, then sleeps in fit."""

    name = "pidsleeper"
    description = "records its pid, then sleeps in fit"

    def fit(self, train, val=None):
        folder = os.environ.get("HASHBENCH_TEST_MARKER")
        if folder:
            (Path(folder) / str(os.getpid())).write_text("fitting")
        time.sleep(float(os.environ.get("HASHBENCH_TEST_SLEEP", "0")))
        self.projection = self.context.rng().standard_normal((train.features.shape[1], self.bits))

    def encode(self, split):
        return (split.features - 0.5) @ self.projection >= 0
