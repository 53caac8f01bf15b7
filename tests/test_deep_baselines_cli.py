"""TBH, BGAN, GreedyHash and Bi-half end to end on digits through the CLI (few epochs)."""

from __future__ import annotations

import json

SHORT = (
    "--set", "tbh.epochs=20", "--set", "tbh.eval_every=10",
    "--set", "bgan.epochs=2", "--set", "bgan.eval_every=1",
    "--set", "greedyhash.epochs=10", "--set", "bihalf.epochs=10",
)


def _records(results):
    return {record["method"]: record for record in (json.loads(p.read_text()) for p in results.glob("runs/*/run.json"))}


def test_every_method_trains_on_digits_and_records_what_it_used(invoke, results, tmp_path):
    result = invoke("run", "--methods", "tbh,bgan,greedyhash,bihalf,lsh", "--bits", "16", "--results", results, *SHORT)
    assert result.exit_code == 0, result.output
    records = _records(results)
    assert set(records) == {"tbh", "bgan", "greedyhash", "bihalf", "lsh"}
    for name in ("tbh", "bgan", "greedyhash", "bihalf"):
        record = records[name]
        assert record["status"] == "ok", record.get("error")
        training = record["training"]
        assert training["settings"]["profile"] == "tiny"
        # Every deep method records the same core of resolved settings, threads included.
        assert {"lr", "batch_size", "epochs", "eval_every", "steps", "released_steps"} <= set(training["settings"])
        # The budget in optimiser steps; no released one for a tiny profile. The deviations
        # from the released code that remain are recorded as short strings.
        assert training["settings"]["steps"] >= training["settings"]["epochs"] and training["settings"]["released_steps"] is None
        assert training["deviations"] and all(isinstance(text, str) for text in training["deviations"])
        assert training["deviations"][0].startswith("tiny profile")
        assert training["settings"]["cpu_threads"] == training["cpu_threads"] == 1
        assert training["validation"]["metric"].startswith("mAP")  # digits has a validation split
        assert training["validation"]["selected_epoch"] in [entry["epoch"] for entry in training["validation"]["scores"]]
        assert record["metrics"]["map"] > 0.25  # random 16-bit codes give about 0.1 on digits
    assert "flattened pixels" in records["tbh"]["training"]["features"]["source"]
    assert "flattened pixels" in records["bgan"]["training"]["neighbour_structure"]["features"]["source"]
    assert records["bgan"]["training"]["backbone"]["name"] == "small"
    assert records["bgan"]["training"]["reconstruction_shape"] == [1, 8, 8]
    report = invoke("report", "--results", results, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    for name in ("tbh", "bgan", "greedyhash", "bihalf"):
        assert f"| {name}" in report.output


def test_a_bad_option_is_one_clear_line(invoke, results):
    result = invoke("run", "--methods", "bgan", "--bits", "16", "--results", results, "--set", "bgan.width=0")
    assert result.exit_code == 2
    assert "bgan.width must be positive" in result.output
    assert not results.exists() or not list(results.glob("runs/*/run.json"))
    unknown = invoke("run", "--methods", "tbh", "--bits", "16", "--results", results, "--set", "tbh.profile=huge")
    assert unknown.exit_code == 2 and "tbh.profile" in unknown.output
