"""The typed run record: versions make old runs stale, bad records are named and skipped,
damaged codes are redone, schema-1 records migrate, reeval reproduces stored metrics."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hashbench import registry
from hashbench.metric_table import METRICS_VERSION
from hashbench.run.runner import GridSpec, run_grid
from hashbench.run.status import directory_status, grid_status
from hashbench.storage.records import SCHEMA_VERSION, CellIdentity, RecordError, RunRecord, Status
from hashbench.storage.store import ResultsStore

SPEC = dict(methods=["lsh", "itq"], bits=[8, 16], seeds=[0])


@pytest.fixture
def ran(tmp_path_factory) -> Path:
    """lsh and itq on digits at 8 and 16 bits: four ok runs (made once, copied per test)."""
    results = tmp_path_factory.mktemp("records") / "results"
    assert all(o.status is Status.OK for o in run_grid(GridSpec(**SPEC, results=results)))
    return results


@pytest.fixture
def results(ran, tmp_path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(ran, copy)
    return copy


def _states(results: Path) -> dict[tuple[str, int], str]:
    return {(s.method, s.bits): s.state.value for s in grid_status(GridSpec(**SPEC, results=results))}


def _record_paths(results: Path, method: str) -> list[Path]:
    return sorted(results.glob(f"runs/{method}-*/run.json"))


def test_a_new_method_version_makes_its_runs_stale_and_run_redoes_exactly_those(results, invoke, monkeypatch):
    monkeypatch.setattr(registry.get_method("itq"), "version", "2")
    assert _states(results) == {("lsh", 8): "ok", ("lsh", 16): "ok", ("itq", 8): "stale", ("itq", 16): "stale"}
    shown = invoke("status", "--methods", "lsh,itq", "--bits", "8,16", "--results", results)
    assert "stale 2" in shown.output and "version 1" in shown.output

    outcomes = run_grid(GridSpec(**SPEC, results=results))
    redone = sorted((o.cell.method, o.cell.bits) for o in outcomes if not o.reused)
    assert redone == [("itq", 8), ("itq", 16)]
    assert all(o.status is Status.OK for o in outcomes)
    assert {o.record.method_version for o in outcomes if o.cell.method == "itq"} == {"2"}
    assert set(_states(results).values()) == {"ok"}
    # The old runs stay on disk under their own keys, stale.
    assert len(_record_paths(results, "itq")) == 4

    report = invoke("report", "--results", results, "--out", results.parent / "report", "--no-plots")
    assert report.exit_code == 0, report.output
    assert "left out 2 stale run(s)" in report.output
    table = (results.parent / "report" / "map.md").read_text()
    assert "| itq |" in table and "v1" not in table
    kept = invoke("report", "--results", results, "--out", results.parent / "all", "--no-plots", "--include-stale")
    assert kept.exit_code == 0, kept.output
    table = (results.parent / "all" / "map.md").read_text()
    assert "itq (v1)" in table and "itq (v2)" in table


def test_a_new_protocol_version_makes_every_run_of_it_stale(results, monkeypatch):
    digits = registry.get_dataset("digits")
    changed = dataclasses.replace(digits.protocols["standard"], version="2")
    monkeypatch.setattr(digits, "protocols", {**digits.protocols, "standard": changed})
    assert set(_states(results).values()) == {"stale"}
    statuses, _ = directory_status(results)
    assert {s.state.value for s in statuses} == {"stale"}


BAD_RECORDS = {
    "method is null": lambda r: {**r, "method": None},
    "a list": lambda r: [r],
    "pr_curve a string": lambda r: {**r, "metrics": {**r["metrics"], "pr_curve": "oops"}},
    "pr_curve lengths differ": lambda r: {**r, "metrics": {**r["metrics"], "pr_curve": {"radius": [0, 1], "precision": [1.0], "recall": [0.0, 1.0]}}},
    "metrics missing": lambda r: {k: v for k, v in r.items() if k != "metrics"},
    "bits a string": lambda r: {**r, "bits": "8"},
    "unknown status": lambda r: {**r, "status": "done"},
    "a newer schema": lambda r: {**r, "schema_version": SCHEMA_VERSION + 1},
}


@pytest.mark.parametrize("damage", sorted(BAD_RECORDS))
def test_a_bad_record_is_named_and_skipped_by_report_status_and_run(results, invoke, damage):
    (path,) = [p for p in _record_paths(results, "lsh") if "-8b-" in str(p)]
    value = json.loads(path.read_text())
    with pytest.raises(RecordError):
        RunRecord.from_json(BAD_RECORDS[damage](value))
    path.write_text(json.dumps(BAD_RECORDS[damage](value)))

    report = invoke("report", "--results", results, "--out", results.parent / "report", "--no-plots")
    assert report.exit_code == 0, report.output
    assert f"skipping {path}" in report.output
    status = invoke("status", "--results", results)
    assert status.exit_code == 0 and f"skipping {path}" in status.output
    outcomes = run_grid(GridSpec(**SPEC, results=results))
    assert sorted((o.cell.method, o.cell.bits) for o in outcomes if not o.reused) == [("lsh", 8)]
    if damage == "a newer schema":
        # A newer hashbench's record is not this one's to replace: the cell fails, the file stays.
        (outcome,) = [o for o in outcomes if not o.reused]
        assert outcome.status is Status.FAILED and "written by a newer hashbench" in outcome.error
        assert json.loads(path.read_text()) == BAD_RECORDS[damage](value)
        return
    # `run` cannot use the record, so it redoes the cell (and writes a good record).
    assert RunRecord.from_json(json.loads(path.read_text())).ok


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not utf-8", b'{"truncated": ', b"[1, 2]"])
def test_unreadable_record_files_are_named(results, invoke, content):
    (path,) = [p for p in _record_paths(results, "itq") if "-16b-" in str(p)]
    path.write_bytes(content)
    statuses, warnings = directory_status(results)
    assert len(statuses) == 3 and [w for w in warnings if str(path) in w]
    report = invoke("report", "--results", results, "--out", results.parent / "report", "--no-plots")
    assert report.exit_code == 0 and f"skipping {path}" in report.output


def test_a_folder_where_the_record_should_be_is_named(results, invoke):
    (path,) = [p for p in _record_paths(results, "itq") if "-16b-" in str(p)]
    path.unlink()
    path.mkdir()
    report = invoke("report", "--results", results, "--out", results.parent / "report", "--no-plots")
    assert report.exit_code == 0 and f"skipping {path}" in report.output


def test_missing_or_truncated_codes_make_a_run_damaged_and_run_redoes_it(results, invoke):
    (lsh8,) = [p.parent for p in _record_paths(results, "lsh") if "-8b-" in str(p)]
    (itq8,) = [p.parent for p in _record_paths(results, "itq") if "-8b-" in str(p)]
    (lsh8 / "codes.npz").unlink()
    data = (itq8 / "codes.npz").read_bytes()
    (itq8 / "codes.npz").write_bytes(data[: len(data) // 2])
    assert _states(results) == {("lsh", 8): "damaged", ("lsh", 16): "ok", ("itq", 8): "damaged", ("itq", 16): "ok"}
    report = invoke("report", "--results", results, "--out", results.parent / "report", "--no-plots")
    assert "codes.npz is missing or differs" in report.output
    outcomes = run_grid(GridSpec(**SPEC, results=results))
    assert sorted((o.cell.method, o.cell.bits) for o in outcomes if not o.reused) == [("itq", 8), ("lsh", 8)]
    assert set(_states(results).values()) == {"ok"}


def _as_schema_1(results: Path, path: Path) -> Path:
    """Rewrite a record as the format before versions existed, in a folder named as then."""
    value = json.loads(path.read_text())
    for name in ("schema_version", "method_version", "protocol_version", "metrics_version", "codes_sha256", "cell_id", "per_query_sha256"):
        value.pop(name)
    (path.parent / "per_query.npz").unlink()
    legacy_key = CellIdentity(
        value["method"], value["params"], value["dataset"], value["protocol"], value["split_seed"], value["bits"], value["seed"]
    )
    legacy_key = legacy_key.prefix + legacy_key.cell_id
    value["key"] = legacy_key
    legacy = results / "runs" / legacy_key
    path.parent.rename(legacy)
    (legacy / "run.json").write_text(json.dumps(value))
    return legacy / "run.json"


def test_schema_1_records_migrate_and_count_as_done(results, invoke):
    legacy = [_as_schema_1(results, path) for path in _record_paths(results, "lsh")]
    record = RunRecord.from_json(json.loads(legacy[0].read_text()))
    assert (record.method_version, record.protocol_version, record.metrics_version) == ("1", "1", "1")
    assert set(_states(results).values()) == {"ok"}
    outcomes = run_grid(GridSpec(**SPEC, results=results))
    assert all(o.reused for o in outcomes)
    report = invoke("report", "--results", results, "--out", results.parent / "report", "--no-plots")
    assert report.exit_code == 0 and "| lsh |" in report.output and "skipping" not in report.output

    # reeval fills in what the old format lacked, changing no metric.
    before = {path: json.loads(path.read_text())["metrics"] for path in legacy}
    again = invoke("reeval", "--results", results)
    assert again.exit_code == 0, again.output
    assert "2 updated" in again.output and "2 unchanged" in again.output
    for path in legacy:
        value = json.loads(path.read_text())
        assert value["schema_version"] == SCHEMA_VERSION and value["codes_sha256"] and value["metrics_version"] == METRICS_VERSION
        assert value["metrics"] == before[path]
        with np.load(path.parent / "per_query.npz") as per_query:
            assert per_query["ap"].dtype == np.float32 and per_query["ap"].shape == (300,)
            assert abs(float(per_query["ap"].astype(np.float64).mean()) - value["metrics"]["map"]) < 1e-6
    assert "per-query values written" in again.output


def test_reeval_reproduces_every_recorded_metric_exactly(results, invoke):
    before = {path: path.read_bytes() for path in results.glob("runs/*/run.json")}
    result = invoke("reeval", "--results", results)
    assert result.exit_code == 0, result.output
    assert "4 unchanged" in result.output and "0 refused" in result.output
    assert {path: path.read_bytes() for path in results.glob("runs/*/run.json")} == before


def test_reeval_recomputes_a_changed_metric_and_refuses_truncated_codes(results, invoke):
    (itq16,) = [p for p in _record_paths(results, "itq") if "-16b-" in str(p)]
    value = json.loads(itq16.read_text())
    truth = value["metrics"]["map"]
    value["metrics"]["map"] = 0.5
    value["metrics_version"] = "1"
    itq16.write_text(json.dumps(value))
    (lsh8,) = [p.parent for p in _record_paths(results, "lsh") if "-8b-" in str(p)]
    data = (lsh8 / "codes.npz").read_bytes()
    (lsh8 / "codes.npz").write_bytes(data[:-10])
    record_before = (lsh8 / "run.json").read_bytes()

    result = invoke("reeval", "--results", results)
    assert result.exit_code == 1
    refused = [line for line in result.output.splitlines() if line.startswith("refused")]
    assert len(refused) == 1 and lsh8.name in refused[0] and "SHA-256" in refused[0]
    assert (lsh8 / "run.json").read_bytes() == record_before  # left as it was
    repaired = json.loads(itq16.read_text())
    assert repaired["metrics"]["map"] == truth and repaired["metrics_version"] == METRICS_VERSION and repaired["reevaluated"]
    assert "changed: map" in result.output


def test_reeval_refuses_a_run_whose_manifest_was_edited(results, invoke):
    (manifest,) = results.glob("splits/*.json")
    value = json.loads(manifest.read_text())
    value["query"][0], value["database"][0] = value["database"][0], value["query"][0]
    manifest.write_text(json.dumps(value))
    result = invoke("reeval", "--results", results)
    assert result.exit_code == 1 and "4 refused" in result.output and "content hash" in result.output


def test_codes_hash_in_the_record_matches_the_file(results):
    store = ResultsStore(results)
    for item in store.iter_records():
        assert item.record.codes_sha256 and store.codes_whole(item.record)
        with np.load(store.run_dir(item.record.key) / "codes.npz") as codes:
            assert codes["query_codes"].shape[0] == item.record.split.sizes["query"]


def test_a_seed_without_the_metric_is_named_and_the_cell_says_how_many_it_averages(results, invoke):
    (path,) = [p for p in _record_paths(results, "itq") if "-16b-" in str(p)]
    seeds = GridSpec(methods=["itq"], bits=[16], seeds=[1, 2], results=results)
    run_grid(seeds)
    value = json.loads(path.read_text())
    value["metrics"]["map_all"] = float("nan")
    path.write_text(json.dumps(value))
    report = invoke("report", "--results", results, "--out", results.parent / "report", "--no-plots", "--metric", "map_all")
    assert report.exit_code == 0, report.output
    assert "itq on digits at 16 bits: 1 of 3 run(s) lack map_all" in report.output
    assert "(n=2 of 3)" in (results.parent / "report" / "map_all.md").read_text()


def test_a_method_that_calls_sys_exit_fails_its_cell_only(tmp_path, invoke):
    plugin = tmp_path / "exiting.py"
    plugin.write_text(
        "import sys\n"
        "from hashbench.method import HashingMethod\n"
        "from hashbench.registry import register_method\n\n"
        "@register_method\n"
        "class Exiting(HashingMethod):\n"
        "    name = 'exiting'\n"
        "    description = 'calls sys.exit in fit'\n"
        "    def fit(self, train, val=None):\n"
        "        sys.exit(3)\n"
        "    def encode(self, split):\n"
        "        raise AssertionError\n"
    )
    results = tmp_path / "results"
    result = invoke("--plugin", plugin, "run", "--methods", "exiting,lsh", "--bits", "8", "--results", results)
    assert result.exit_code == 1
    records = {r.method: r for r in (RunRecord.from_json(json.loads(p.read_text())) for p in results.glob("runs/*/run.json"))}
    assert records["exiting"].status is Status.FAILED and records["exiting"].error == "SystemExit: 3"
    assert records["lsh"].ok


def test_an_edited_manifest_is_rewritten_from_the_draw_before_the_next_cell(results):
    (manifest,) = results.glob("splits/*.json")
    original = json.loads(manifest.read_text())
    edited = dict(original, query=original["query"][1:])
    manifest.write_text(json.dumps(edited))
    run_grid(GridSpec(methods=["lsh"], bits=[24], results=results))
    assert json.loads(manifest.read_text()) == original


def test_an_empty_grid_is_refused(invoke, tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["lsh"]\nbits = []\n')
    result = invoke("run", "--config", config, "--results", tmp_path / "results")
    assert result.exit_code == 2 and "bits: an empty list runs nothing" in result.output
    assert not (tmp_path / "results").exists()
    from hashbench.errors import UserError

    with pytest.raises(UserError, match="no seeds given"):
        run_grid(GridSpec(methods=["lsh"], seeds=[], results=tmp_path / "results"))
    assert not (tmp_path / "results").exists()


def test_a_run_folder_without_a_record_is_interrupted_and_run_finishes_it(results, invoke):
    (record,) = [p for p in _record_paths(results, "itq") if "-8b-" in str(p)]
    (record.parent / "codes.npz").unlink()
    record.unlink()
    (record.parent / "checkpoint.pt").write_bytes(b"partial")
    assert _states(results)[("itq", 8)] == "interrupted"
    statuses, _ = directory_status(results)
    assert [s.key for s in statuses if s.state is Status.INTERRUPTED] == [record.parent.name]
    shown = invoke("status", "--results", results)
    assert "interrupted 1" in shown.output
    outcomes = run_grid(GridSpec(**SPEC, results=results))
    assert [(o.cell.method, o.cell.bits) for o in outcomes if not o.reused] == [("itq", 8)]


def test_a_record_that_cannot_be_written_fails_its_cell_and_the_grid_goes_on(tmp_path, monkeypatch):
    import errno

    real = ResultsStore.write_record
    calls = []

    def full_once(self, record):
        calls.append(record.key)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.run_dir(record.key) / "run.json"))
        return real(self, record)

    monkeypatch.setattr(ResultsStore, "write_record", full_once)
    outcomes = run_grid(GridSpec(methods=["lsh"], bits=[8, 16], results=tmp_path / "results"))
    assert [o.status for o in outcomes] == [Status.FAILED, Status.OK]
    assert "could not write the run record" in outcomes[0].error and "No space left" in outcomes[0].error
    # Nothing half-written stands for the first cell: it is simply not done.
    assert _states_of(tmp_path / "results", ["lsh"], [8]) == {("lsh", 8): "interrupted"}


def _states_of(results: Path, methods: list[str], bits: list[int]) -> dict[tuple[str, int], str]:
    return {(s.method, s.bits): s.state.value for s in grid_status(GridSpec(methods=methods, bits=bits, results=results))}


def test_files_where_hashbench_keeps_folders_are_one_line_each(results, invoke):
    (itq8,) = [p.parent for p in _record_paths(results, "itq") if "-8b-" in str(p)]
    shutil.rmtree(itq8)
    itq8.write_text("not a folder")
    outcomes = run_grid(GridSpec(**SPEC, results=results))
    failed = [o for o in outcomes if o.status is Status.FAILED]
    assert len(failed) == 1 and "is a file where the run's folder belongs" in failed[0].error
    shown = invoke("status", "--results", results)
    assert shown.exit_code == 0 and f"skipping {itq8}" in shown.output
    shutil.rmtree(results / "splits")
    (results / "splits").write_text("")
    again = invoke("run", "--methods", "lsh", "--bits", "8", "--results", results)
    assert again.exit_code == 2 and "splits is a file where hashbench keeps a folder" in again.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("--methods", "cibhash", "--set", "cibhash.tau=inf"), "cibhash.tau must be a finite number"),
        (("--methods", "cibhash", "--set", "cibhash.beta=nan"), "cibhash.beta must be a finite number"),
        (("--methods", "bihalf", "--set", "bihalf.lr=inf"), "bihalf.lr must be a finite number"),
        (("--methods", "lsh", "--seeds", str(2**64)), "seeds must be integers from 0 to 2**63 - 1"),
    ],
)
def test_non_finite_parameters_and_huge_seeds_are_refused_before_anything_is_written(invoke, tmp_path, args, message):
    result = invoke("run", *args, "--bits", "8", "--results", tmp_path / "results")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "results").exists()


def test_methods_learn_the_protocol_their_splits_were_drawn_under(tmp_path):
    from hashbench.method import HashingMethod

    class ProtocolSpy(HashingMethod):
        name = "protocol-spy"
        description = "records the protocol of its splits"

        def fit(self, train, val=None):
            self.context.record["protocols"] = [train.protocol, None if val is None else val.protocol]

        def encode(self, split):
            return split.features[:, : self.bits] > 0.5

    registry.register_method(ProtocolSpy)
    (outcome,) = run_grid(GridSpec(methods=["protocol-spy"], bits=[8], results=tmp_path / "results"))
    assert outcome.record.training["protocols"] == ["standard", "standard"]


def _example_record() -> dict:
    path = sorted((Path(__file__).resolve().parent.parent / "reports/digits/results/runs").glob("itq-*/run.json"))[0]
    return json.loads(path.read_text())


def test_the_record_schema_declares_every_field_of_the_run_record():
    from hashbench.storage.records import record_schema

    declared = set(record_schema().model_fields)
    assert declared == {f.name for f in dataclasses.fields(RunRecord)} - {"schema_version"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bits": "8"}, "bits: input should be a valid integer, got '8'"),
        ({"bits": True}, "bits: input should be a valid integer, got True"),
        ({"seed": -1}, "seed: input should be greater than or equal to 0, got -1"),
        ({"key": ""}, "key: string should have at least 1 character, got ''"),
        ({"status": "done"}, "status: input should be 'ok' or 'failed', got 'done'"),
        ({"timings": {"fit": "1s"}}, "timings.fit: input should be a valid number, got '1s'"),
        ({"metrics": "all"}, "metrics: input should be a valid dictionary, got 'all'"),
        ({"split": {"sizes": {"train": 1.5}}}, "split.sizes.train: input should be a valid integer, got 1.5"),
    ],
)
def test_a_record_with_a_wrong_field_is_one_line_naming_the_field_and_value(change, message):
    with pytest.raises(RecordError) as error:
        RunRecord.from_json({**_example_record(), **change})
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"map": "x"}, "metrics.map: input should be a valid number, got 'x'"),
        ({"precision_at_k": {"top": 0.5}}, "metrics.precision_at_k.top: string should match pattern '^[0-9]+$', got 'top'"),
        ({"pr_curve": {"radius": [0, 1], "precision": [1.0], "recall": [0.0, 1.0]}},
         "metrics.pr_curve: radius, precision and recall differ in length"),
        ({"num_queries": 2.5}, "metrics.num_queries: input should be a valid integer, got 2.5"),
    ],
)
def test_a_record_with_a_wrong_metric_is_one_line_naming_the_metric(metrics, message):
    record = _example_record()
    with pytest.raises(RecordError) as error:
        RunRecord.from_json({**record, "metrics": {**record["metrics"], **metrics}})
    assert str(error.value) == message


def test_every_example_record_reads_and_round_trips_unchanged():
    for path in sorted((Path(__file__).resolve().parent.parent / "reports/digits/results/runs").glob("*/run.json")):
        value = json.loads(path.read_text())
        assert RunRecord.from_json(value).to_json() == value, path
