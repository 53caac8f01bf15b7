"""The "as released" experiment files: each method under its own released split.

A config file sets protocols per dataset, so the as-released grid is one file per protocol
group (docs/PROTOCOLS.md, "Methods as released"); together they must cover every method that
has its released split in hashbench, once, and share one results directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hashbench.config import load_config
from hashbench.runner import GridSpec, plan_grid

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
EXPECTED = {
    "as-released-cibhash-code.toml": {("cibhash", "cibhash-code")},
    "as-released-tbh-code.toml": {("tbh", "tbh-code"), ("greedyhash", "tbh-code")},
    "as-released-standard.toml": {("bgan", "standard")},
}


def _cells(name: str):
    config = load_config(EXPERIMENTS / name)
    spec = GridSpec(
        methods=config["methods"],
        datasets=config["datasets"],
        bits=config["bits"],
        seeds=config["seeds"],
        split_seed=config["split_seed"],
        protocols=config["protocols"],
        params=config.get("params", {}),
    )
    return config, plan_grid(spec)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_file_runs_its_methods_under_their_released_split(name):
    config, cells = _cells(name)
    assert {(cell.method, cell.protocol) for cell in cells} == EXPECTED[name]
    assert {cell.dataset for cell in cells} == {"cifar10"}
    assert len(cells) == len(EXPECTED[name]) * 3 * 3  # 16/32/64 bits, seeds 0-2
    assert config["results"] == "results/as-released"
    assert all(params.get("profile") == "paper" for params in config["params"].values())


def test_the_files_together_run_each_method_once():
    methods = [method for name in EXPECTED for method in load_config(EXPERIMENTS / name)["methods"]]
    assert len(methods) == len(set(methods)) == 4
    assert sorted(path.name for path in EXPERIMENTS.glob("as-released-*.toml")) == sorted(EXPECTED)
