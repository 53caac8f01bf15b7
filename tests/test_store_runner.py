"""Results store and runner: atomic writes, resume, kill midway, failure isolation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hashbench.data.splits import SplitManifest
from hashbench.metrics import evaluate
from hashbench.run.runner import GridSpec, run_grid
from hashbench.storage import atomic
from hashbench.storage.records import CellIdentity, Status

PLUGINS = Path(__file__).resolve().parent / "plugins.py"


def test_atomic_write_leaves_old_file_intact_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    atomic.write_json(target, {"status": "ok"})

    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_json(target, {"status": "half"})
    assert json.loads(target.read_text()) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left


def test_written_files_get_the_usual_permissions_not_owner_only(tmp_path):
    target = tmp_path / "record.json"
    atomic.write_json(target, {"status": "ok"})
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_run_key_is_stable_and_distinguishes_every_field_and_version():
    base = dict(method="itq", params={"iterations": 50}, dataset="digits", protocol="standard", split_seed=0, bits=32, seed=0)
    key = CellIdentity(**base).key("1", "1")
    assert key == CellIdentity(**base).key("1", "1")
    assert key.startswith("itq-digits-standard-split0-32b-seed0-")
    for field, value in [("params", {"iterations": 10}), ("bits", 16), ("seed", 1), ("split_seed", 1), ("protocol", "x")]:
        assert CellIdentity(**{**base, field: value}).key("1", "1") != key
    assert CellIdentity(**base).key("2", "1") != key and CellIdentity(**base).key("1", "2") != key
    # The cell id leaves the versions out: every version of a cell shares it.
    assert CellIdentity(**base).cell_id == CellIdentity(**base).cell_id != key


def test_grid_runs_stores_codes_and_resumes_without_work(results):
    spec = GridSpec(methods=["lsh", "itq"], bits=[12, 32], seeds=[0], results=results)
    first = run_grid(spec)
    assert [o.status for o in first] == [Status.OK] * 4 and not any(o.reused for o in first)
    record = first[0].record
    stored = json.loads((results / "runs" / record.key / "run.json").read_text())
    for field in ("schema_version", "method", "method_version", "protocol_version", "params", "dataset", "protocol",
                  "split_seed", "seed", "bits", "status", "metrics", "metrics_version", "codes_sha256", "timings",
                  "environment", "split", "execution"):
        assert field in stored
    assert record.map_k == 100
    assert set(record.timings) >= {"fit", "encode", "evaluate"}
    assert record.environment["numpy"] == np.__version__
    manifest = SplitManifest.load(results / record.split.manifest)
    assert manifest.hash == record.split.hash

    # The stored codes re-evaluate to the recorded metrics (12 bits: 2 bytes per row).
    run_dir = results / "runs" / record.key
    codes = np.load(run_dir / "codes.npz")
    assert codes["query_codes"].dtype == np.uint8 and codes["query_codes"].shape == (300, 2)
    from hashbench.datasets.digits import Digits

    labels = Digits().load(None).labels
    again = evaluate(
        codes["query_codes"], codes["database_codes"], labels[manifest.splits["query"]],
        labels[manifest.splits["database"]], bits=12, topk=100,
    )
    assert again.to_dict()["map"] == pytest.approx(record.metric("map"), abs=1e-12)

    stamp = (run_dir / "run.json").stat().st_mtime_ns
    second = run_grid(spec)
    assert [(o.status, o.reused) for o in second] == [(Status.OK, True)] * 4
    assert (run_dir / "run.json").stat().st_mtime_ns == stamp
    forced = run_grid(GridSpec(methods=["lsh"], bits=[12], results=results, force=True))
    assert forced[0].status == Status.OK and not forced[0].reused


def test_same_seed_gives_same_codes(results, tmp_path):
    spec = GridSpec(methods=["itq"], bits=[16], seeds=[3], results=results)
    first = run_grid(spec)[0]
    other = run_grid(GridSpec(methods=["itq"], bits=[16], seeds=[3], results=tmp_path / "other"))[0]
    a = np.load(results / "runs" / first.record.key / "codes.npz")
    b = np.load(tmp_path / "other" / "runs" / other.record.key / "codes.npz")
    assert np.array_equal(a["database_codes"], b["database_codes"])


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hashbench", "--plugin", str(PLUGINS), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_failing_method_is_recorded_and_the_grid_goes_on(results):
    process = _cli("run", "--methods", "exploding,zerosign,lsh", "--bits", "8", "--results", str(results))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in results.glob("runs/*/run.json"))}
    assert records["lsh"]["status"] == "ok"
    assert records["exploding"]["status"] == "failed"
    assert records["exploding"]["error"] == "RuntimeError: this method always fails"
    assert "Traceback" in (results / "runs" / records["exploding"]["key"] / "log.txt").read_text()
    assert records["zerosign"]["status"] == "failed" and "a zero from sign() is not a bit" in records["zerosign"]["error"]
    assert "2 of 3 runs failed" in stderr
    # A failed run is retried on the next invocation; the ok one is not.
    process = _cli("run", "--methods", "exploding,lsh", "--bits", "8", "--results", str(results))
    stdout, _ = process.communicate(timeout=120)
    assert "done before" in stdout and "failed" in stdout


def test_run_killed_midway_leaves_no_record_and_resumes(results, tmp_path):
    marker = tmp_path / "marker"
    args = ("run", "--methods", "slow", "--bits", "8", "--results", str(results))
    process = _cli(*args, env={"HASHBENCH_TEST_MARKER": str(marker), "HASHBENCH_TEST_SLEEP": "60"})
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and process.poll() is None, "the run never started fitting"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not list(results.glob("runs/*/run.json"))
    assert not [p for p in results.rglob("*") if p.name.endswith(".tmp")]
    # The lock died with the process: the next runner takes the same cell and finishes it.
    finished = _cli(*args)
    _, stderr = finished.communicate(timeout=120)
    assert finished.returncode == 0, stderr
    (record_path,) = results.glob("runs/*/run.json")
    assert json.loads(record_path.read_text())["status"] == "ok"
