"""[method_protocols.METHOD]: a method's own protocol per dataset, in one experiment file.

Checked from the file to the records: the grid gives each method its protocol, the command
line still wins, mistakes are one line naming the table, and a run writes each method's cells
under its protocol (and the report shows one column per protocol).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from grid_options import grid_options

from hashbench.cli.run import build_spec
from hashbench.errors import UserError
from hashbench.run.config import load_config
from hashbench.run.runner import plan_grid

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


pytestmark = pytest.mark.usefixtures("features_plugin")


GRID = """
methods = ["lsh", "itq"]
bits = [8]
seeds = [0]
results = "results"

[datasets.emb]
path = "emb.npz"
val_size = 40
query_size = 50

[protocols]
emb = "standard"

[method_protocols.itq]
emb = "standard-val"

[params.itq]
iterations = 3
"""


@pytest.fixture
def grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HASHBENCH_RESULTS", raising=False)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 4, 400)
    vectors = (rng.standard_normal((4, 16))[ids] * 3 + rng.standard_normal((400, 16))).astype(np.float32)
    np.savez("emb.npz", features=vectors, labels=ids)
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return path


def test_each_method_gets_its_protocol_and_the_command_line_wins(grid):
    assert load_config(grid)["method_protocols"] == {"itq": {"emb": "standard-val"}}
    cells = plan_grid(build_spec(grid_options(), grid))
    assert {(cell.method, cell.protocol) for cell in cells} == {("lsh", "standard"), ("itq", "standard-val")}
    # one protocol for all on the command line replaces the file's tables
    cells = plan_grid(build_spec(grid_options(protocol="standard"), grid))
    assert {cell.protocol for cell in cells} == {"standard"}
    # DATASET=NAME replaces them for that dataset
    cells = plan_grid(build_spec(grid_options(protocol="emb=standard-val"), grid))
    assert {cell.protocol for cell in cells} == {"standard-val"}
    # --methods picks some of the file's methods: the others' tables do not apply
    cells = plan_grid(build_spec(grid_options(methods=["lsh"]), grid))
    assert {(cell.method, cell.protocol) for cell in cells} == {("lsh", "standard")}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[method_protocols]\nitq = "standard"\n', r"method_protocols: expected tables \[method_protocols.METHOD\]"),
        ("[method_protocols.itq]\nemb = 3\n", 'method_protocols.itq: expected a table of dataset = "protocol name"'),
    ],
)
def test_malformed_tables_name_the_file_and_table(tmp_path, table, message):
    path = tmp_path / "bad.toml"
    path.write_text('methods = ["itq"]\n' + table)
    with pytest.raises(UserError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[method_protocols.sh]\nemb = \"standard\"\n", r"\[method_protocols.sh\]: 'sh' is not among the methods being run"),
        ("[method_protocols.lsh]\ndigits = \"standard\"\n", r"\[method_protocols.lsh\]: dataset 'digits' is not among the datasets"),
        ("[method_protocols.lsh]\nemb = \"nope\"\n", "has no protocol 'nope'"),
    ],
)
def test_tables_that_do_not_fit_the_grid_are_one_clear_line(invoke, grid, table, message):
    grid.write_text(GRID + table)
    result = invoke("status", "--config", grid)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output), result.output


def test_a_run_writes_each_methods_cells_under_its_protocol(invoke, grid, tmp_path):
    result = invoke("run", "--config", grid)
    assert result.exit_code == 0, result.output
    records = [json.loads(path.read_text()) for path in sorted(Path("results").glob("runs/*/run.json"))]
    assert sorted((record["method"], record["protocol"], record["status"]) for record in records) == [
        ("itq", "standard-val", "ok"), ("lsh", "standard", "ok"),
    ]  # fmt: skip
    status = invoke("status", "--config", grid)
    assert "standard-val" in status.output and "ok 2" in status.output
    report = invoke("report", "--results", "results", "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    table = (tmp_path / "report" / "map.md").read_text()
    assert "| method | emb/standard 8 bits | emb/standard-val 8 bits |" in table, table


def test_the_as_released_file_gives_each_method_its_released_split():
    config = load_config(EXPERIMENTS / "as-released.toml")
    assert config["method_protocols"] == {
        "cibhash": {"cifar10": "cibhash-code"},
        "tbh": {"cifar10": "tbh-code"},
        "greedyhash": {"cifar10": "tbh-code"},
        "bihalf": {"cifar10": "bihalf-code-i"},
        "bgan": {"cifar10": "standard"},
        "nsh": {"cifar10": "tbh-code"},
        "sdc": {"cifar10": "standard"},
        "dsch": {"cifar10": "standard"},
        "ssdh": {"cifar10": "ssdh-paper"},
    }
    cells = plan_grid(build_spec(grid_options(), EXPERIMENTS / "as-released.toml"))
    assert len(cells) == 9 * 3 * 3
    assert {(cell.method, cell.protocol) for cell in cells} == {
        (method, table["cifar10"]) for method, table in config["method_protocols"].items()
    }
    assert all(params == {"profile": "paper"} for params in config["params"].values())
    assert config["results"] == "results/as-released"
