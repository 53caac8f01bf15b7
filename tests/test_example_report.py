"""The committed example (reports/digits): its records load, reeval reproduces every stored
metric exactly, and the README's numbers are the ones the records give."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "reports" / "digits" / "results"


def test_the_example_records_load_and_reeval_reproduces_them(tmp_path, invoke):
    from hashbench.results_frame import read_records

    records, warnings = read_records(EXAMPLE)
    assert len(records) == 90 and all(record.ok for record in records) and not warnings
    copy = tmp_path / "results"
    shutil.copytree(EXAMPLE, copy)
    before = {path: path.read_bytes() for path in copy.glob("runs/*/*")}
    result = invoke("reeval", "--results", copy)
    assert result.exit_code == 0, result.output
    assert "90 unchanged" in result.output
    assert {path: path.read_bytes() for path in copy.glob("runs/*/*")} == before


def test_the_readme_numbers_come_from_the_example_records():
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "readme_numbers.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr
