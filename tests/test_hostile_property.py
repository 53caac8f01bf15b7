"""Property: malformed config files and split manifests never crash `run` or `status`.

Whatever is thrown at them, the CLI ends with exit status 0, 1 or 2 (the `invoke` runner
does not catch exceptions, so a traceback fails the test), `status` changes nothing stored,
and `run` never damages a finished run.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GRID = ("--methods", "lsh", "--bits", "8")


def _invoke(*args):
    from hashbench.cli import cli

    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results directory holding one finished run (LSH, digits, 8 bits)."""
    results = tmp_path_factory.mktemp("finished") / "results"
    done = _invoke("run", *GRID, "--results", results)
    assert done.exit_code == 0, done.output
    return results


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    monkeypatch.delenv("HASHBENCH_RESULTS", raising=False)
    monkeypatch.delenv("HASHBENCH_DATA", raising=False)


# -- malformed split manifests -------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# Index lists as a hand-edited or damaged manifest may hold them: out of range, negative,
# beyond 64 bits, fractional, nested, of the wrong type.
EDGE_VALUES = st.sampled_from([2**64, 2**70, -(2**70), 2**63 - 1, -1, 10**6, 1.5, 1e300, "1", None, True, [], [1, 2], {}])
index_lists = st.lists(st.integers(0, 1800) | EDGE_VALUES, min_size=1, max_size=5) | st.lists(
    st.lists(st.integers(0, 10), min_size=1, max_size=3), min_size=1, max_size=3
)
MANIFEST_FIELDS = ("dataset", "protocol", "split_seed", "num_items", "topk", "sizes", "query", "database", "train", "val", "hash")


@st.composite
def manifests(draw, original: dict) -> bytes:
    """A damaged copy of a real manifest: fields dropped, retyped or given odd index lists,
    or the text cut short, or bytes that are no JSON at all."""
    kind = draw(st.sampled_from(["edit", "truncate", "bytes", "json"]))
    text = json.dumps(original)
    if kind == "truncate":
        return text.encode()[: draw(st.integers(0, len(text) - 1))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    value = dict(original)
    for field in draw(st.lists(st.sampled_from(MANIFEST_FIELDS), min_size=1, max_size=4, unique=True)):
        action = draw(st.sampled_from(["drop", "value", "indices", "indices"]))
        if action == "drop":
            value.pop(field, None)
        elif action == "indices":
            value[field] = draw(index_lists)
        else:
            value[field] = draw(EDGE_VALUES | json_values)
    return json.dumps(value).encode()


def test_manifest_values_beyond_64_bits_or_nested_are_a_user_error(tmp_path):
    from hashbench.data.splits import SplitManifest
    from hashbench.errors import UserError

    fields = {"dataset": "digits", "protocol": "standard", "split_seed": 0, "num_items": 9, "topk": 1, "hash": "0"}
    path = tmp_path / "manifest.json"
    for query in ([2**70], [[1, 2]], [1e300]):
        path.write_text(json.dumps({**fields, "query": query, "database": [1], "train": [1]}))
        with pytest.raises(UserError, match="unreadable"):
            SplitManifest.load(path)


@pytest.fixture(scope="module")
def manifest_json(finished) -> dict:
    (path,) = (finished / "splits").glob("*.json")
    return json.loads(path.read_text())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_manifests_never_crash_run_or_status(finished, manifest_json, data):
    content = data.draw(manifests(manifest_json))
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(scratch) / "results"
        shutil.copytree(finished, results)
        (manifest_path,) = (results / "splits").glob("*.json")
        manifest_path.write_bytes(content)
        # A second, stray manifest of another name is read by nothing and must not matter.
        (results / "splits" / "digits-standard-split0-000000000000.json").write_bytes(content)
        before = _tree_digest(results)
        for status in (_invoke("status", *GRID, "--results", results), _invoke("status", "--results", results)):
            assert status.exit_code in (0, 1, 2), status.output
        assert _tree_digest(results) == before  # status writes nothing
        run = _invoke("run", *GRID, "--results", results)
        assert run.exit_code in (0, 1, 2), run.output
        after = _tree_digest(results)
        finished_files = [name for name in before if name.startswith("runs/")]
        assert {name: after.get(name) for name in finished_files} == {name: before[name] for name in finished_files}


@pytest.mark.parametrize("query", [[2**70], [[1, 2], [3, 4]], [1e300], [-(2**64)]])
def test_a_manifest_with_impossible_indices_is_redrawn(finished, manifest_json, tmp_path, query):
    results = tmp_path / "results"
    shutil.copytree(finished, results)
    (manifest_path,) = (results / "splits").glob("*.json")
    manifest_path.write_text(json.dumps({**manifest_json, "query": query}))
    run = _invoke("run", *GRID, "--results", results)
    assert run.exit_code == 0, run.output
    assert json.loads(manifest_path.read_text()) == manifest_json  # rewritten from the draw


# -- malformed config files ----------------------------------------------------------------------


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{json.dumps(key)} = {_toml_value(item)}" for key, item in value.items()) + "}"


# Values are drawn from small vocabularies, so that a config that happens to be valid runs
# a cheap grid: no deep method, no worker processes, no imported module of any name.
NAMES = st.sampled_from(["lsh", "itq", "nope", "", "LSH", "digits", "cifar10", "standard", "lists", "auto", "cpu"])
SMALL_INTS = st.sampled_from([0, 1, 4, 8, -1, 2**63 - 1, -(2**63)])
scalars = NAMES | SMALL_INTS | st.booleans() | st.floats(allow_nan=True, allow_infinity=True)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3), max_leaves=6)
KEYS = {
    "methods": st.lists(NAMES, max_size=3) | NAMES | values,
    "datasets": st.lists(st.sampled_from(["digits", "cifar10", "nope"]), max_size=2) | values,
    "bits": st.lists(st.sampled_from([0, -8, 8, "8", 8.5]), max_size=3) | values,
    "seeds": st.lists(SMALL_INTS, max_size=2) | values,
    "split_seed": SMALL_INTS | values,
    "protocol": NAMES | values,
    "device": NAMES | values,
    "executor": st.sampled_from(["local", "slurm", "kubernetes"]) | values,
    "jobs": st.sampled_from([0, -1, 1, "2"]) | values,
    "plugins": st.sampled_from([[], ["no_such_plugin_module"], ["missing_file.py"], [""], [1]]),
    "drop_bad_rows": st.booleans() | values,
    "params": st.dictionaries(st.sampled_from(["lsh", "itq", "nope"]), st.dictionaries(NAMES, values, max_size=2), max_size=2) | values,
    "protocols": st.dictionaries(NAMES, NAMES | values, max_size=2) | values,
    "slurm": st.dictionaries(st.sampled_from(["partition", "time_limit", "mem_gb", "gpus"]), values, max_size=2) | values,
    "unknown_key": values,
}


@st.composite
def config_files(draw) -> bytes:
    kind = draw(st.sampled_from(["settings", "settings", "settings", "cut", "text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    if kind == "text":
        return draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=6, unique=True))
    text = "".join(f"{key} = {_toml_value(draw(KEYS[key]))}\n" for key in keys)
    if kind == "cut" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    return text.encode()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=config_files())
def test_malformed_config_files_never_crash_run_or_status(finished, content):
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(scratch) / "results"
        shutil.copytree(finished, results)
        config = Path(scratch) / "grid.toml"
        config.write_bytes(content)
        before = _tree_digest(results)
        status = _invoke("status", "--config", config, "--results", results, "--data-root", Path(scratch) / "data")
        assert status.exit_code in (0, 1, 2), status.output
        assert _tree_digest(results) == before
        run = _invoke("run", "--config", config, "--results", results, "--data-root", Path(scratch) / "data")
        assert run.exit_code in (0, 1, 2), run.output
        if run.exit_code == 2:
            assert len(run.output.strip().splitlines()) == 1, run.output  # a mistake is one line
