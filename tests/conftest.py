"""Shared fixtures: a CLI runner and a scratch results directory; which tests may use a GPU.

The suite runs on the CPU, so that results do not depend on the machine: CUDA is hidden
from every test except those marked ``@pytest.mark.cuda``, which run when a GPU is present
and are skipped otherwise. ``HASHBENCH_TEST_CUDA=1`` insists (a ``cuda`` test fails when
torch sees no GPU); ``HASHBENCH_TEST_CUDA=0`` (or ``CUDA_VISIBLE_DEVICES`` set empty) hides
the GPU from every test.

How: where a GPU may be present, CUDA stays visible to this process and each test not
marked ``cuda`` runs with ``torch.cuda.is_available()`` false (so ``--device auto`` means
the CPU) and ``CUDA_VISIBLE_DEVICES`` empty for the processes it starts. Elsewhere CUDA is
hidden from the whole process before anything initialises it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

CUDA_SWITCH = os.environ.get("HASHBENCH_TEST_CUDA", "").strip()


def _gpu_may_be_present() -> bool:
    if CUDA_SWITCH == "0" or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    if CUDA_SWITCH == "1":
        return True
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


GPU_TESTS = _gpu_may_be_present()
if not GPU_TESTS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU; runs where one is present (HASHBENCH_TEST_CUDA=1 insists, =0 skips)"
    )


@pytest.fixture(autouse=True)
def _device_policy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA for ``cuda`` tests only (see the module docstring)."""
    if request.node.get_closest_marker("cuda") is not None:
        if not GPU_TESTS:
            pytest.skip("no GPU for this run (HASHBENCH_TEST_CUDA=1 to insist where one is present)")
        import torch

        if not torch.cuda.is_available():
            if CUDA_SWITCH == "1":
                pytest.fail("HASHBENCH_TEST_CUDA=1, but torch sees no CUDA device")
            pytest.skip("torch sees no CUDA device")
        return
    if GPU_TESTS:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # for the processes the test starts
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run the CLI in-process: ``invoke("run", "--methods", "lsh")`` → click Result."""
    from hashbench.cli import cli

    monkeypatch.delenv("HASHBENCH_RESULTS", raising=False)
    monkeypatch.delenv("HASHBENCH_DATA", raising=False)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, [str(arg) for arg in args], catch_exceptions=False)

    return run


@pytest.fixture(params=["numba", "numpy"])
def cpu_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each CPU ranking kernel: the compiled counting kernels (numba, at
    every problem size) and the numpy sorts (see hashbench.metrics.kernel_choice)."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("HASHBENCH_KERNELS", request.param)
    return request.param


@pytest.fixture
def features_plugin():
    """`features` registered (as its entry point does), and the registry as it was afterwards."""
    from hashbench import registry
    from hashbench.datasets.features import Features

    registry.datasets.names()  # entry points first, so that they are in the snapshot
    entries = dict(registry.datasets._entries)
    registry.datasets._entries.setdefault("features", registry._Entry(Features, "tests"))
    yield
    registry.datasets._entries.clear()
    registry.datasets._entries.update(entries)
