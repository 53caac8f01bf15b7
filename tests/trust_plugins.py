"""Hostile method plugins for tests/test_trust_plugins.py (loaded with --plugin tests/trust_plugins.py).

Each misbehaves the way a careless third-party method might: it writes into the arrays it
is given, changes the working directory, or ends the process. None of that may change
what the cells after it compute or where they are recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hashbench.method import HashingMethod
from hashbench.registry import register_method


def _scribble(target) -> None:
    """Overwrite ``target`` with zeros where numpy allows it (a read-only array refuses)."""
    if isinstance(target, np.ndarray):
        try:
            target[...] = 0
        except ValueError:  # read-only: what the harness gives where writing would leak
            pass


class _Projection(HashingMethod):
    def _project(self, train) -> None:
        self.projection = self.context.rng().standard_normal((train.features.shape[1], self.bits))

    def encode(self, split):
        return (np.asarray(split.features) - 0.5) @ self.projection >= 0


@register_method
class Scribbler(_Projection):
    """Zeroes every array its splits give it: the dataset's features, the split's features,
    labels, indices and images."""

    name = "scribbler"
    description = "writes zeros into the arrays it is given"

    def fit(self, train, val=None):
        self._project(train)
        for split in (train, val):
            if split is None:
                continue
            _scribble(split.feature_source)
            _scribble(split.features)
            _scribble(split.labels)
            _scribble(split.indices)
            _scribble(split.images())


@register_method
class Wanderer(_Projection):
    """Moves the process into a new folder ``elsewhere`` (under the working directory) in fit."""

    name = "wanderer"
    description = "changes the working directory in fit"

    def fit(self, train, val=None):
        self._project(train)
        target = Path("elsewhere")
        target.mkdir(exist_ok=True)
        os.chdir(target)


@register_method
class Quitter(_Projection):
    """Ends its process with status 0 in fit, as a script's ``os._exit(0)`` would."""

    name = "quitter"
    description = "calls os._exit(0) in fit"

    def fit(self, train, val=None):
        os._exit(0)
