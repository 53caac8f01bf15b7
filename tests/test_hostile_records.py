"""Property: malformed run records never crash `run`, `status`, `report` or `reeval`.

Random damage to a real record (fields dropped or given values of any JSON type, the text cut
short, bytes that are no JSON) must end each command with exit status 0, 1 or 2 (the runner
below does not catch exceptions, so a traceback fails the test); `status` and `report` change
nothing stored, and no other run's files are touched by any of them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GRID = ("--methods", "lsh", "--bits", "8,16")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
FIELDS = (
    "schema_version", "key", "cell_id", "method", "dataset", "protocol", "bits", "seed", "split_seed", "status",
    "params", "method_version", "protocol_version", "split", "metrics", "metrics_version", "codes_sha256", "timings",
    "peak_memory_mb", "training", "environment", "execution", "error", "started", "finished",
)
METRIC_FIELDS = ("map", "map_k", "map_all", "pr_curve", "precision_at_k", "recall_at_k", "num_queries", "bits", "topk")


def _invoke(*args):
    from hashbench.cli import cli

    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def _digest(folder: Path, skip: Path | None = None) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path != skip and path.name != ".lock"
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("records") / "results"
    done = _invoke("run", *GRID, "--results", results, "--quiet")
    assert done.exit_code == 0, done.output
    return results


@st.composite
def damaged(draw, original: dict) -> bytes:
    kind = draw(st.sampled_from(["edit", "edit", "metrics", "truncate", "bytes", "json"]))
    text = json.dumps(original)
    if kind == "truncate":
        return text.encode()[: draw(st.integers(0, len(text) - 1))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    value = json.loads(text)
    target, names = (value["metrics"], METRIC_FIELDS) if kind == "metrics" else (value, FIELDS)
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            target.pop(name, None)
        else:
            target[name] = draw(json_values)
    return json.dumps(value).encode()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_records_never_crash_run_status_report_or_reeval(finished, data):
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(scratch) / "results"
        shutil.copytree(finished, results)
        victim, other = sorted(results.glob("runs/*/run.json"))
        victim.write_bytes(data.draw(damaged(json.loads(victim.read_text()))))
        before = _digest(results)
        others = _digest(other.parent)

        for command in (("status", "--results", results), ("report", "--results", results, "--out", Path(scratch) / "out", "--no-plots")):
            result = _invoke(*command)
            assert result.exit_code in (0, 1, 2), result.output
            assert _digest(results) == before, command[0]
        result = _invoke("reeval", "--results", results)
        assert result.exit_code in (0, 1, 2), result.output
        result = _invoke("run", *GRID, "--results", results, "--quiet")
        assert result.exit_code in (0, 1, 2), result.output
        assert _digest(other.parent) == others  # the intact run is never touched
