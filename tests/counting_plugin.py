"""Method plugins for the executor and status tests (loaded with --plugin tests/counting_plugin.py).

Their behaviour comes from environment variables, not parameters, so that it does not
change the run keys.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hashbench.method import HashingMethod
from hashbench.registry import register_method


def _wait_for_peers() -> None:
    """On this process's first fit, wait until HASHBENCH_TEST_PEERS processes have fitted once.

    Makes the runners of a concurrency test overlap for certain, whatever their start-up times.
    """
    folder = os.environ.get("HASHBENCH_TEST_BARRIER")
    if not folder:
        return
    mine = Path(folder) / f"started-{os.getpid()}"
    if mine.exists():
        return
    mine.write_text("")
    deadline = time.monotonic() + 120
    while len(list(Path(folder).glob("started-*"))) < int(os.environ.get("HASHBENCH_TEST_PEERS", "1")):
        if time.monotonic() > deadline:
            raise RuntimeError("the other runners never started")
        time.sleep(0.05)


@register_method
class Counting(HashingMethod):
    """A random projection that logs each fit (bits, seed, pid) to HASHBENCH_TEST_FIT_LOG."""

    name = "counting"
    description = "random projection; logs every fit"

    def fit(self, train, val=None):
        _wait_for_peers()
        log = os.environ.get("HASHBENCH_TEST_FIT_LOG")
        if log:
            # One short write with O_APPEND: lines from concurrent processes do not interleave.
            descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(descriptor, f"{self.bits} {self.context.seed} {os.getpid()}\n".encode())
            finally:
                os.close(descriptor)
        time.sleep(float(os.environ.get("HASHBENCH_TEST_FIT_SLEEP", "0")))
        self.projection = self.context.rng().standard_normal((train.features.shape[1], self.bits))

    def encode(self, split):
        return (split.features - 0.5) @ self.projection >= 0


@register_method
class Dying(HashingMethod):
    """Ends its process in fit, as a job killed by the OS or the scheduler would (SIGKILL:
    an ``os._exit`` in a method only fails its cell, see hashbench.run.containment)."""

    name = "dying"
    description = "kills its process in fit"

    def fit(self, train, val=None):
        os.kill(os.getpid(), signal.SIGKILL)

    def encode(self, split):
        raise AssertionError("never reached")
