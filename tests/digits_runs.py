"""One cell of a method on digits through the runner, for the learning tests: its run record
as stored, or its mAP (16 bits, seed 0, the default protocol)."""

from __future__ import annotations

import json
from pathlib import Path

from hashbench.run.runner import GridSpec, run_grid

BITS = 16


def run_record(method: str, params: dict, results: Path, device: str = "cpu") -> dict:
    """One cell through the runner; its run record as stored (``runs/<key>/run.json``)."""
    (outcome,) = run_grid(
        GridSpec(methods=[method], bits=[BITS], seeds=[0], params={method: params} if params else {},
                 results=results, device=device)
    )  # fmt: skip
    assert outcome.status == "ok", outcome.error
    (path,) = Path(results).glob("runs/*/run.json")
    return json.loads(path.read_text())


def run_map(method: str, params: dict, results: Path, device: str = "cpu") -> float:
    """The mAP of that cell (at the protocol's cut-off)."""
    return float(run_record(method, params, results, device)["metrics"]["map"])
