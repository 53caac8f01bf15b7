"""Shared fixtures: a CLI runner and a scratch results directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

# Tests run on CPU with a fixed thread count, so results do not depend on the machine.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


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
