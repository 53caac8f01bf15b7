"""A table never prints a number of other data, and a result reproduces on any x86-64 CPU.

- reproduced means integers equal exactly and floats within relative 1e-12: records made with
  numpy's dispatch held at AVX2 reproduce at the CPU's best and back;
- a cell pools only runs of the same data and protocol definition (a replaced embedding file,
  two files of one name, an edited cut-off in a manifest);
- a record of a newer hashbench is never overwritten, and clearing lock files while a run
  trains does not let a second runner in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hashbench.reproducibility import same_value
from hashbench.storage.records import RunRecord

ROOT = Path(__file__).resolve().parent.parent
AVX2 = "X86_V4 AVX512_ICL AVX512_SPR"  # NPY_DISABLE_CPU_FEATURES: numpy's dispatch held at AVX2


def _records(results: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(results.glob("runs/*/run.json"))}


def _cli(*args, simd: str = "best", cwd: Path | None = None, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``hashbench ARGS`` in a fresh process (numpy reads its dispatch switches once, at import)."""
    environment = {key: value for key, value in os.environ.items() if key != "NPY_DISABLE_CPU_FEATURES"}
    if simd == "avx2":
        environment["NPY_DISABLE_CPU_FEATURES"] = AVX2
    environment.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "hashbench", *map(str, args)], capture_output=True, text=True, timeout=300, env=environment, cwd=cwd
    )


# --------------------------------------------------------------------------------------------
# 1. reproduced across CPUs


def test_reeval_leaves_a_record_whose_floats_differ_in_the_last_bits(invoke, results):
    assert invoke("run", "--methods", "itq", "--bits", "16", "--results", results, "--quiet").exit_code == 0
    (path,) = results.glob("runs/*/run.json")
    value = json.loads(path.read_text())
    value["metrics"]["map_tie_aware"] = float(np.nextafter(value["metrics"]["map_tie_aware"], 1.0))
    path.write_text(json.dumps(value))
    before = path.read_bytes()
    result = invoke("reeval", "--results", results)
    assert result.exit_code == 0, result.output
    assert "1 unchanged, 0 updated" in result.output and "within relative 1e-12: map_tie_aware" in result.output
    assert path.read_bytes() == before
    # A difference beyond the tolerance is a change: the record is rewritten with the new value.
    value["metrics"]["map"] += 1e-9
    path.write_text(json.dumps(value))
    result = invoke("reeval", "--results", results)
    assert "0 unchanged, 1 updated" in result.output and "changed: map" in result.output


def test_the_same_value_rule():
    assert same_value({"map": 0.8630266312376481, "map_k": 100}, {"map": 0.8630266312376483, "map_k": 100})
    assert not same_value({"map": 0.86302663}, {"map": 0.86302664})
    assert not same_value({"map_k": 100}, {"map_k": 101})  # integers exactly
    assert same_value({"curve": [0.0, float("nan")]}, {"curve": [1e-16, float("nan")]})
    assert not same_value({"curve": [0.1, 0.2]}, {"curve": [0.1]})


GRID = ("run", "--methods", "lsh,pcah,itq,sh", "--bits", "16,64", "--seeds", "0,1", "--quiet")


def test_records_made_at_avx2_reproduce_at_the_cpus_best_and_back(tmp_path):
    made = {}
    for simd in ("avx2", "best"):
        results = tmp_path / simd
        run = _cli(*GRID, "--results", results, simd=simd)
        assert run.returncode == 0, run.stdout + run.stderr
        made[simd] = results
    avx2, best = _records(made["avx2"]), _records(made["best"])
    assert avx2.keys() == best.keys() and len(avx2) == 16
    for key, record in avx2.items():
        numeric = record["environment"]["numeric"]
        assert numeric["npy_disable_cpu_features"] == AVX2 and "X86_V4" not in numeric["numpy_simd"]
        assert "npy_disable_cpu_features" not in best[key]["environment"]["numeric"]
        # codes are integers: equal exactly; metrics within the tolerance
        with np.load(made["avx2"] / "runs" / key / "codes.npz") as one, np.load(made["best"] / "runs" / key / "codes.npz") as other:
            for name in ("query_codes", "database_codes"):
                assert np.array_equal(one[name], other[name]), (key, name)
        assert same_value(record["metrics"], best[key]["metrics"]), key
    # and each folder reevaluates unchanged, without a rewritten file, under the other dispatch
    for simd, other in (("avx2", "best"), ("best", "avx2")):
        before = {path: path.read_bytes() for path in made[simd].glob("runs/*/*") if path.name != ".lock"}
        again = _cli("reeval", "--results", made[simd], simd=other)
        assert again.returncode == 0 and "16 unchanged, 0 updated, 0 refused" in again.stdout, again.stdout + again.stderr
        assert {path: path.read_bytes() for path in made[simd].glob("runs/*/*") if path.name != ".lock"} == before


# --------------------------------------------------------------------------------------------
# 2. a cell pools only runs of the same data


def _embedding(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=1500)
    vectors = rng.normal(size=(1500, 24)).astype(np.float32) + 3 * np.eye(5, 24, dtype=np.float32)[labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=vectors, labels=labels)


def _summary_csv(report: Path) -> str:
    return (report / "map.csv").read_text() if (report / "map.csv").exists() else ""


def test_a_replaced_embedding_file_makes_its_runs_stale_in_status_report_and_run(tmp_path):
    data, results, report = tmp_path / "emb.npz", tmp_path / "results", tmp_path / "report"
    grid = ("run", "--methods", "lsh", "--bits", "16", "--datasets", f"features:{data}", "--results", results, "--quiet")
    _embedding(data, 0)
    assert _cli(*grid, "--seeds", "0,1").returncode == 0
    _embedding(data, 1)  # other vectors under the same name
    assert _cli(*grid, "--seeds", "2").returncode == 0
    status = _cli("status", "--results", results)
    assert "stale 2" in status.stdout and "ok 1" in status.stdout, status.stdout
    shown = _cli("report", "--results", results, "--out", report, "--no-plots")
    assert shown.returncode == 0, shown.stderr
    assert "1 seed per cell" in shown.stdout + (report / "map.md").read_text()
    assert "left out 2 stale run(s)" in shown.stderr + shown.stdout
    (current,) = [r for r in _records(results).values() if r["seed"] == 2]
    assert f"{current['metrics']['map']:.4f}" in (report / "map.md").read_text()
    # `run` redoes exactly the two stale cells
    redo = _cli(*grid, "--seeds", "0,1,2")
    assert redo.returncode == 0 and len(_records(results)) == 5


def test_two_files_of_one_name_in_one_results_folder_are_refused(tmp_path):
    results = tmp_path / "results"
    first, second, copy = tmp_path / "a" / "good.npz", tmp_path / "b" / "good.npz", tmp_path / "c" / "good.npz"
    _embedding(first, 0)
    _embedding(second, 1)
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    grid = ("run", "--methods", "lsh", "--bits", "16", "--results", results, "--quiet")
    assert _cli(*grid, "--datasets", f"features:{first}").returncode == 0
    refused = _cli(*grid, "--seeds", "1", "--datasets", f"features:{second}")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"already stands in {results} for {first}" in refused.stderr and "Traceback" not in refused.stderr
    assert len(_records(results)) == 1
    # a copy of the same file is the same data: its runs pool with the first one's
    assert _cli(*grid, "--seeds", "1", "--datasets", f"features:{copy}").returncode == 0
    shown = _cli("report", "--results", results, "--out", tmp_path / "report", "--no-plots")
    assert "2 seeds per cell" in (tmp_path / "report" / "map.md").read_text(), shown.stdout


def test_runs_of_two_protocol_versions_never_share_a_cell(invoke, results, tmp_path):
    assert invoke("run", "--methods", "lsh", "--bits", "16", "--seeds", "0,1", "--results", results, "--quiet").exit_code == 0
    # one record as if made under another definition of the protocol (a changed draw or cut-off)
    path = sorted(results.glob("runs/*/run.json"))[0]
    value = json.loads(path.read_text())
    value["protocol_version"] = "0"
    path.write_text(json.dumps(value))
    shown = invoke("report", "--results", results, "--out", tmp_path / "report", "--no-plots", "--include-stale")
    assert shown.exit_code == 0, shown.output
    table = (tmp_path / "report" / "map.md").read_text()
    assert "digits (protocol v0) 16 bits" in table and "digits (protocol v1) 16 bits" in table
    assert "2 seeds per cell" not in table


def test_an_edited_cutoff_in_a_manifest_is_refused_by_reeval_and_redrawn_by_run(invoke, results):
    assert invoke("run", "--methods", "lsh", "--bits", "16", "--results", results, "--quiet").exit_code == 0
    (manifest,) = results.glob("splits/*.json")
    value = json.loads(manifest.read_text())
    value["topk"] = 5  # outside the hashed index lists
    manifest.write_text(json.dumps(value))
    (record,) = results.glob("runs/*/run.json")
    before = record.read_bytes()
    refused = invoke("reeval", "--results", results)
    assert refused.exit_code == 1 and "mAP@5" in refused.output and "1 refused" in refused.output
    assert record.read_bytes() == before
    # the next grid, in workers that read the manifest from disk, is scored at the protocol's k
    run = invoke("run", "--methods", "lsh,itq", "--bits", "16", "--results", results, "--jobs", "2", "--quiet")
    assert run.exit_code == 0, run.output
    assert {r["metrics"]["map_k"] for r in _records(results).values()} == {100}
    assert json.loads(manifest.read_text())["topk"] == 100


# --------------------------------------------------------------------------------------------
# 5. records and locks


def test_a_record_of_a_newer_hashbench_is_never_overwritten(invoke, results):
    grid = ("run", "--methods", "lsh", "--bits", "16", "--results", results, "--quiet")
    assert invoke(*grid).exit_code == 0
    (path,) = results.glob("runs/*/run.json")
    value = {**json.loads(path.read_text()), "schema_version": 3, "a_new_field": {"x": 1}}
    path.write_text(json.dumps(value))
    before = path.read_bytes()
    for extra in ((), ("--force",)):
        again = invoke(*grid, *extra)
        assert again.exit_code == 1 and "written by a newer hashbench" in again.output, again.output
        assert path.read_bytes() == before


def test_clearing_lock_files_while_a_run_trains_does_not_let_a_second_runner_in(invoke, results, tmp_path):
    marker = tmp_path / "fitting"
    grid = ("run", "--plugin", ROOT / "tests" / "plugins.py", "--methods", "slow", "--bits", "8", "--results", results, "--quiet")
    first = subprocess.Popen(
        [sys.executable, "-m", "hashbench", *map(str, grid)],
        env={**os.environ, "HASHBENCH_TEST_MARKER": str(marker), "HASHBENCH_TEST_SLEEP": "6"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert time.monotonic() < deadline and first.poll() is None, "the first runner never started training"
            time.sleep(0.05)
        for lock in results.rglob("*.lock"):  # someone tidies the lock files away
            lock.unlink()
        assert (results / "runs").is_dir() and not list(results.rglob("*.lock"))
        second = invoke(*grid)
        assert "running elsewhere" in second.output, second.output
        status = invoke("status", "--results", results)
        assert "running 1" in status.output, status.output
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    (record,) = [RunRecord.from_json(r) for r in _records(results).values()]
    assert record.ok


def test_runs_of_other_labels_are_stale_for_run_and_refused_by_reeval(invoke, results, monkeypatch):
    from hashbench import registry

    grid = ("run", "--methods", "lsh", "--bits", "16", "--results", results)
    assert invoke(*grid, "--quiet").exit_code == 0
    (path,) = results.glob("runs/*/run.json")
    recorded = json.loads(path.read_text())
    assert len(recorded["data"]["labels_sha256"]) == 64
    digits = registry.get_dataset("digits")
    load = digits.load

    def relabelled(self, root, **options):  # an edited label file: the last item's class moves by one
        arrays = load(self, root)
        row = arrays.labels[-1].copy()
        arrays.labels[-1] = np.roll(row, 1)
        return arrays

    monkeypatch.setattr(digits, "load", relabelled)
    refused = invoke("reeval", "--results", results)
    assert refused.exit_code == 1 and "labels changed since the run" in refused.output
    assert json.loads(path.read_text()) == recorded
    again = invoke(*grid)
    assert again.exit_code == 0 and "reused" not in again.output.lower(), again.output
    assert json.loads(path.read_text())["data"]["labels_sha256"] != recorded["data"]["labels_sha256"]


def test_a_protocol_name_that_is_no_file_name_is_refused_before_anything_is_written(invoke, results, monkeypatch):
    import dataclasses

    from hashbench import registry

    digits = registry.get_dataset("digits")
    escaping = dataclasses.replace(digits.protocols["standard"], name="../../escaped")
    monkeypatch.setattr(digits, "protocols", {**digits.protocols, "standard": escaping})
    refused = invoke("run", "--methods", "lsh", "--bits", "16", "--results", results)
    assert refused.exit_code == 2 and "protocol name '../../escaped' cannot be used" in refused.output
    assert not results.exists() and not (results.parent / "escaped").exists()
