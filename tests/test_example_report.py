"""The committed example (reports/digits): its records load, reeval reproduces every stored
metric (integers exactly, floats within relative 1e-12) with numpy's dispatch at the CPU's best
and held at AVX2, and the README's numbers are the ones the records give."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hashbench.storage.store import LOCK_NAME

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "reports" / "digits" / "results"


# numpy's dispatch held at AVX2, whatever the CPU offers (the example was made on an AVX2 machine)
AVX2 = "X86_V4 AVX512_ICL AVX512_SPR"


def _results_files(folder: Path) -> dict[Path, bytes]:
    """What reeval may not change: every file of the runs but their lock files (machine state)."""
    return {path: path.read_bytes() for path in folder.glob("runs/*/*") if path.name != LOCK_NAME}


@pytest.mark.parametrize("simd", ["best", "avx2"])
def test_the_example_records_load_and_reeval_reproduces_them(tmp_path, simd):
    from hashbench.report.results import read_records

    records, warnings = read_records(EXAMPLE)
    assert len(records) == 90 and all(record.ok for record in records) and not warnings
    copy = tmp_path / "results"
    shutil.copytree(EXAMPLE, copy)
    before = _results_files(copy)
    environment = {key: value for key, value in os.environ.items() if key != "NPY_DISABLE_CPU_FEATURES"}
    if simd == "avx2":
        environment["NPY_DISABLE_CPU_FEATURES"] = AVX2
    # A fresh process: numpy reads NPY_DISABLE_CPU_FEATURES once, when it is imported.
    result = subprocess.run(
        [sys.executable, "-m", "hashbench", "reeval", "--results", str(copy)],
        capture_output=True, text=True, timeout=300, env=environment,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "90 unchanged, 0 updated, 0 refused" in result.stdout
    assert "floats within relative 1e-12" in result.stdout
    assert _results_files(copy) == before


def test_the_readme_numbers_come_from_the_example_records():
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "readme_numbers.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr
