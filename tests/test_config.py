"""Experiment files: a TOML grid expands as written, options override it, mistakes are named."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from grid_options import grid_options

from hashbench import registry
from hashbench.cli.run import build_settings, build_spec, parse_protocol_option
from hashbench.data import HashingDataset
from hashbench.data.splits import SampledProtocol
from hashbench.errors import UserError
from hashbench.method import HashingMethod
from hashbench.run.config import load_config
from hashbench.run.runner import plan_grid

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

GRID = """
description = "a test grid"
methods = ["lsh", "itq"]
datasets = ["digits"]
bits = [8, 12]
seeds = [0, 3]
split_seed = 2
results = "out/results"

[protocols]
digits = "standard"

[params.itq]
iterations = 7

[slurm]
partition = "gpu"
gpus_per_run = 1
time_limit = 30
mem_gb = 4.5
"""


@pytest.fixture
def grid_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HASHBENCH_RESULTS", raising=False)
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return path


def test_grid_expands_as_written(grid_file):
    spec = build_spec(grid_options(), grid_file)
    cells = plan_grid(spec)
    expected = list(itertools.product(["digits"], ["lsh", "itq"], [8, 12], [0, 3]))
    assert [(c.dataset, c.method, c.bits, c.seed) for c in cells] == expected
    assert {c.protocol for c in cells} == {"standard"}
    assert {c.split_seed for c in cells} == {2}
    assert next(c for c in cells if c.method == "itq").params.iterations == 7
    assert spec.results == Path("out/results")
    assert len({c.key for c in cells}) == len(cells)


def test_options_override_the_file(grid_file):
    options = grid_options(bits=[16], seeds=[5], results=Path("elsewhere"), assignments=("itq.iterations=3",))
    settings = build_settings(options, grid_file)
    spec = build_spec(options, grid_file)
    assert spec.bits == [16] and spec.seeds == [5] and spec.results == Path("elsewhere")
    assert spec.params == {"itq": {"iterations": "3"}}
    assert spec.methods == ["lsh", "itq"]  # not given: the file's
    assert settings["slurm"] == {"partition": "gpu", "gpus_per_run": 1, "time_limit": 30, "mem_gb": 4.5}
    # A bare --protocol applies to every dataset and replaces the file's per-dataset table.
    spec = build_spec(grid_options(protocol="standard"), grid_file)
    assert spec.protocol == "standard" and spec.protocols == {}
    spec = build_spec(grid_options(protocol="digits=standard"), grid_file)
    assert spec.protocol is None and spec.protocols == {"digits": "standard"}


def test_status_shows_the_grid_of_a_file_with_overrides(invoke, grid_file, tmp_path):
    result = invoke("status", "--config", grid_file, "--bits", "16", "--results", tmp_path / "none")
    assert result.exit_code == 0, result.output
    assert "pending 4" in result.output and "(of 4)" in result.output  # 2 methods × 1 bits × 2 seeds


def test_protocol_option_forms():
    assert parse_protocol_option("standard") == ("standard", {})
    assert parse_protocol_option("cifar10=cibhash-code, coco=standard") == (
        None,
        {"cifar10": "cibhash-code", "coco": "standard"},
    )
    with pytest.raises(UserError, match="expected NAME or DATASET=NAME"):
        parse_protocol_option("cifar10=,coco=standard")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('methods = ["lsh"]\n[protocols]\ndigits = 3\n', 'protocols: expected a table of dataset = "protocol name"'),
        ('methods = ["lsh"]\n[slurm]\npartitions = "gpu"\n', "slurm.partitions: unknown setting"),
        ('methods = ["lsh"]\n[slurm]\ntime_limit = "1h"\n', "slurm.time_limit: expected an integer"),
        ('methods = ["lsh"]\n[slurm]\nmem_gb = 0\n', "slurm.mem_gb: must be positive"),
        ('methods = ["lsh"]\nexecutor = "kubernetes"\n', "executor: expected one of local, slurm"),
        ('methods = ["lsh"]\njobs = 0\n', "jobs: must be at least 1"),
        ('methods = ["lsh"]\nplugins = [3]\n', "plugins: expected str"),
    ],
)
def test_file_mistakes_name_the_file_and_setting(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "mnist=standard"], "a protocol is given for dataset 'mnist', which is not among the datasets"),
        (["--protocol", "digits=nope"], "dataset digits has no protocol 'nope'"),
        (["--partition", "gpu"], "--partition apply to --executor slurm only"),
        (["--executor", "slurm", "--jobs", "2"], "--jobs applies to --executor local"),
        (["--jobs", "0"], "0 is not in the range x>=1"),
    ],
)
def test_bad_grid_options_are_one_clear_line(invoke, results, args, message):
    result = invoke("run", "--methods", "lsh", "--bits", "8", "--results", results, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not results.exists()


def test_plugins_named_in_the_file_are_loaded(tmp_path):
    plugin = Path(__file__).resolve().parent / "counting_plugin.py"
    path = tmp_path / "grid.toml"
    path.write_text(f'methods = ["counting"]\nbits = [8]\nplugins = ["{plugin}"]\n')
    spec = build_spec(grid_options(), path)
    assert spec.plugins == [str(plugin)]
    assert [c.method for c in plan_grid(spec)] == ["counting"]


def test_digits_quick_experiment_expands_to_its_grid(monkeypatch):
    monkeypatch.delenv("HASHBENCH_RESULTS", raising=False)
    spec = build_spec(grid_options(), EXPERIMENTS / "digits-quick.toml")
    cells = plan_grid(spec)
    assert len(cells) == 4 * 3 * 3
    assert {c.method for c in cells} == {"lsh", "pcah", "itq", "sh"}
    assert {(c.dataset, c.protocol) for c in cells} == {("digits", "standard")}
    assert spec.device == "cpu" and spec.results == Path("results/digits-quick")


def _stub_method(name):
    return type(f"Stub_{name}", (HashingMethod,), {"name": name, "fit": lambda *a: None, "encode": lambda *a: None})


def _stub_dataset(name):
    protocols = {
        protocol: SampledProtocol(name=protocol, description="stub", topk=1, query_size=1, train_size=1)
        for protocol in ("standard", "standard-val", "cibhash-code")
    }
    return type(
        f"Stub_{name}", (HashingDataset,), {"name": name, "protocols": protocols, "load": lambda self, root, **kw: None}
    )


def test_cibhash_paper_experiment_expands_to_the_papers_table(monkeypatch):
    """12 methods × 3 datasets × 3 code lengths × 3 seeds, each dataset under its stated protocol.

    Methods or datasets whose plugins are not installed here get stand-ins, so the file is
    checked whatever is registered; registered ones are checked for real.
    """
    monkeypatch.delenv("HASHBENCH_RESULTS", raising=False)
    config = load_config(EXPERIMENTS / "cibhash-paper.toml")
    assert config["methods"] == ["cibhash", "bgan", "tbh", "sgh", "uhbdnn", "deepbit", "lsh", "pcah", "itq", "sh", "sph", "agh"]
    assert config["datasets"] == ["cifar10", "nuswide", "coco"]
    assert config["bits"] == [16, 32, 64] and config["seeds"] == [0, 1, 2]
    assert config["protocols"] == {"cifar10": "standard", "nuswide": "standard", "coco": "standard"}
    registered_methods, registered_datasets = set(registry.methods.names()), set(registry.datasets.names())
    for name in set(config["methods"]) - registered_methods:
        monkeypatch.setitem(registry.methods._entries, name, registry._Entry(_stub_method(name), "test stand-in"))
    for name in set(config["datasets"]) - registered_datasets:
        monkeypatch.setitem(registry.datasets._entries, name, registry._Entry(_stub_dataset(name), "test stand-in"))
    cells = plan_grid(build_spec(grid_options(), EXPERIMENTS / "cibhash-paper.toml"))
    assert len(cells) == 12 * 3 * 3 * 3 == 324
    assert len({c.key for c in cells}) == 324
    assert {c.protocol for c in cells} == {"standard"}
    assert {(c.method, c.dataset, c.bits, c.seed) for c in cells} == set(
        itertools.product(config["methods"], config["datasets"], [16, 32, 64], [0, 1, 2])
    )


@pytest.mark.parametrize("key", ["methods", "datasets", "bits", "seeds"])
def test_an_empty_list_is_refused_naming_the_key(tmp_path, key):
    path = tmp_path / "empty.toml"
    text = {"methods": 'methods = []\n'}.get(key, f'methods = ["lsh"]\n{key} = []\n')
    path.write_text(text)
    with pytest.raises(UserError, match=rf"{key}: an empty list runs nothing; give at least one, e.g. {key} = ") as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_no_plugins_is_fine(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('methods = ["lsh"]\nplugins = []\n')
    assert load_config(path)["plugins"] == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"methods = [\"lsh\"]\n# caf\xe9 in latin-1\n", r"not UTF-8 text \(byte \d+, line 2\)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", r"not UTF-8 text \(byte 0, line 1\)"),
        (b"methods = [\"lsh\"]\n\x00\x00\x00", r"holds a NUL byte \(line 2\)"),
        (b"", "is empty"),
        (b"  \n\n", "is empty"),
        (b"# nothing but a comment\n", "holds no settings"),
        (b"\x00" * (2 << 20), "larger than 1024 KiB"),
    ],
)
def test_a_file_that_is_not_a_config_is_one_clear_line(invoke, tmp_path, results, content, message):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)
    for command in ("run", "status"):
        result = invoke(command, "--config", path, "--results", results)
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and str(path) in result.output
    assert not results.exists()


def test_a_folder_or_a_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="is a folder; name a TOML experiment file"):
        load_config(tmp_path)
    with pytest.raises(UserError, match=r"cannot read it \(No such file or directory\)"):
        load_config(tmp_path / "absent.toml")
