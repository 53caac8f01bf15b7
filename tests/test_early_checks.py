"""Bad input is refused early, in one line that names the option, variable or file and says
how to fix it, before anything runs or is written (and nothing written before is changed):
the metrics' environment variables, empty folder paths, repeated list items, plugin names
too long for a run folder, lock files this user may not open, numbers too large for a
float, a plugin's path-valued parameter, and parameters far beyond their declared range."""

from __future__ import annotations

import dataclasses
import errno
import sys
from pathlib import Path

import numpy as np
import pytest

BIG = "9" * 400  # a 400-digit integer


@pytest.fixture(autouse=True)
def _quiet_and_restored(monkeypatch):
    """No progress lines (a refused command prints its error alone), and the registry and
    plugin modules as they were before the test."""
    from hashbench import registry

    monkeypatch.setenv("HASHBENCH_PROGRESS", "quiet")  # `run` writes the mode here; restored after
    for variable in ("HASHBENCH_THREADS", "HASHBENCH_KERNELS"):
        monkeypatch.delenv(variable, raising=False)
    registry.methods.names()  # entry points first, so that they are in the snapshot
    entries = dict(registry.methods._entries)
    modules = set(sys.modules)
    yield
    registry.methods._entries.clear()
    registry.methods._entries.update(entries)
    for name in set(sys.modules) - modules:
        if name.startswith("hashbench_plugin_"):
            del sys.modules[name]


def one_error_line(result) -> str:
    """The single line of a refused command: no traceback, nothing else."""
    output = result.output
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    return lines[0]


def run_args(results: Path, *extra: str) -> list[str]:
    return ["run", "--methods", "lsh", "--bits", "8", "--results", str(results), "--quiet", *extra]


# -- 1. HASHBENCH_THREADS / HASHBENCH_KERNELS ------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    [
        ("HASHBENCH_THREADS", "abc", "HASHBENCH_THREADS=4"),
        ("HASHBENCH_THREADS", "0", "HASHBENCH_THREADS=4"),
        ("HASHBENCH_KERNELS", "xyz", "HASHBENCH_KERNELS=numpy"),
    ],
    ids=["threads-abc", "threads-0", "kernels-xyz"],
)
def test_a_bad_metrics_variable_refuses_run_before_any_cell(invoke, results, monkeypatch, variable, value, fix):
    monkeypatch.setenv(variable, value)
    result = invoke(*run_args(results))
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert variable in line and repr(value) in line and fix in line and "unset it" in line
    assert not results.exists()  # nothing fitted, nothing written


def test_a_bad_metrics_variable_refuses_reeval_and_eval_and_changes_nothing(invoke, results, tmp_path, monkeypatch):
    assert invoke(*run_args(results)).exit_code == 0
    (record,) = results.glob("runs/*/run.json")
    before = record.read_bytes()
    monkeypatch.setenv("HASHBENCH_THREADS", "many")
    result = invoke("reeval", "--results", results)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "HASHBENCH_THREADS" in line and "'many'" in line and "unset it" in line
    assert record.read_bytes() == before

    monkeypatch.delenv("HASHBENCH_THREADS")
    monkeypatch.setenv("HASHBENCH_KERNELS", "fastest")
    rng = np.random.default_rng(0)
    archive = tmp_path / "codes.npz"
    np.savez(
        archive,
        query_codes=rng.integers(0, 2, (10, 8)),
        database_codes=rng.integers(0, 2, (50, 8)),
        query_labels=rng.integers(0, 3, 10),
        database_labels=rng.integers(0, 3, 50),
    )
    result = invoke("eval", "--npz", archive)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "HASHBENCH_KERNELS" in line and "'fastest'" in line and "auto, numba, numpy" in line and "unset it" in line
    # --help still works with the variable set
    assert invoke("run", "--help").exit_code == 0


# -- 2. empty folder paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "option", "example"),
    [
        ("run", "--results", "--results results"),
        ("run", "--data-root", "--data-root data"),
        ("run", "--cache", "--cache data/.hashbench-cache"),
        ("reeval", "--results", "--results results"),
        ("status", "--results", "--results results"),
    ],
    ids=["run-results", "run-data-root", "run-cache", "reeval-results", "status-results"],
)
def test_an_empty_folder_option_is_refused_not_the_working_directory(invoke, tmp_path, monkeypatch, command, option, example):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--methods", "lsh", "--bits", "8", "--quiet"] if command == "run" else [command]
    if command == "run" and option in ("--data-root", "--cache"):
        args += ["--results", str(tmp_path / "results")]
    result = invoke(*args, option, "")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert option in line and "empty path" in line and example in line and f"{option} ." in line
    assert list(tmp_path.iterdir()) == []  # no runs/, splits/ or results/ here


def test_an_empty_folder_in_a_config_file_is_refused(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["lsh"]\nbits = [8]\nresults = ""\n')
    result = invoke("run", "--config", config, "--quiet")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert str(config) in line and "results" in line and 'results = "results"' in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["grid.toml"]


# -- 3. repeated list items -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "repeated", "once"),
    [
        ("--bits", "16,32,16", "16", "--bits 16,32"),
        ("--seeds", "0,0", "0", "--seeds 0"),
        ("--methods", "lsh,lsh", "lsh", "--methods lsh"),
        ("--datasets", "digits,digits", "digits", "--datasets digits"),
    ],
    ids=["bits", "seeds", "methods", "datasets"],
)
def test_a_repeated_list_item_is_refused(invoke, results, option, value, repeated, once):
    args = ["run", "--methods", "lsh", "--bits", "8", "--results", str(results), "--quiet"]
    result = invoke(*args, option, value)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert option in line and f"{repeated} is given twice" in line and once in line
    assert not results.exists()


@pytest.mark.parametrize(
    ("setting", "repeated", "once"),
    [
        ('methods = ["lsh", "lsh"]', '"lsh"', 'methods = ["lsh"]'),
        ('methods = ["lsh"]\nbits = [8, 16, 8]', "8", "bits = [8, 16]"),
        ('methods = ["lsh"]\nseeds = [1, 1]', "1", "seeds = [1]"),
        ('methods = ["lsh"]\ndatasets = ["digits", "digits"]', '"digits"', 'datasets = ["digits"]'),
    ],
    ids=["methods", "bits", "seeds", "datasets"],
)
def test_a_repeated_list_item_in_a_config_file_is_refused(invoke, results, tmp_path, setting, repeated, once):
    config = tmp_path / "grid.toml"
    config.write_text(setting + "\n")
    result = invoke("run", "--config", config, "--results", results, "--quiet")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert str(config) in line and f"{repeated} is listed twice" in line and once in line
    assert not results.exists()


# -- 4. a method name too long for a run folder ------------------------------------------------------

PLUGIN = '''
from hashbench.method import HashingMethod
from hashbench.registry import register_method


@register_method
class Named(HashingMethod):
    name = {name!r}
    description = "signs of random projections"

    def fit(self, train, val=None):
        self.projection = self.context.rng().standard_normal((train.features.shape[1], self.bits))

    def encode(self, split):
        return split.features @ self.projection >= 0
'''


def test_a_method_name_too_long_for_a_run_folder_is_refused_at_registration(invoke, results, tmp_path):
    plugin = tmp_path / "long_named.py"
    plugin.write_text(PLUGIN.format(name="m" * 250))
    result = invoke("--plugin", plugin, *run_args(results))
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "method name" in line and "250 characters" in line and "at most 64" in line
    assert "255 bytes" in line and "shorter name" in line
    assert not results.exists()


def test_the_longest_names_allowed_fit_a_run_folder(invoke, results, tmp_path):
    from hashbench import registry

    assert sum(registry.NAME_LIMITS.values()) + registry.RUN_KEY_FIXED_BYTES <= 255
    name = "m" * registry.NAME_LIMITS["method"]
    plugin = tmp_path / "longest_named.py"
    plugin.write_text(PLUGIN.format(name=name))
    result = invoke("--plugin", plugin, "run", "--methods", name, "--bits", "8", "--results", results, "--quiet",
                    "--seeds", str(2**63 - 1), "--split-seed", str(2**63 - 1))  # fmt: skip
    assert result.exit_code == 0, result.output
    (folder,) = (results / "runs").iterdir()
    assert folder.name.startswith(name) and len(folder.name) <= 255


# -- 5. a lock file this user may not open ---------------------------------------------------------


@pytest.fixture
def locks_denied(monkeypatch):
    """Every run's lock file refuses to open, as another user's does in a shared folder (the
    tests run as root, where chmod 000 denies nothing)."""
    from hashbench.storage import store

    def acquire(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", self.lock_file)

    return lambda: monkeypatch.setattr(store.FileLock, "acquire", acquire)


def test_run_names_a_lock_file_it_may_not_open(invoke, results, locks_denied):
    locks_denied()
    result = invoke(*run_args(results))
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    (folder,) = (results / "runs").iterdir()
    assert f"lock file {folder / '.lock'}" in line and "another user" in line and "another --results" in line
    assert not list(results.glob("runs/*/run.json"))


def test_reeval_names_a_lock_file_it_may_not_open_and_changes_nothing(invoke, results, locks_denied):
    assert invoke(*run_args(results)).exit_code == 0
    (record,) = results.glob("runs/*/run.json")
    before = record.read_bytes()
    locks_denied()
    result = invoke("reeval", "--results", results)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert f"lock file {record.parent / '.lock'}" in line and "chmod" in line
    assert record.read_bytes() == before


# -- 6. a number too large for a float -------------------------------------------------------------


def test_a_400_digit_float_parameter_is_one_line(invoke, results, tmp_path):
    result = invoke("run", "--methods", "cibhash", "--bits", "8", "--results", results, "--quiet", "--set", f"cibhash.tau={BIG}")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "cibhash.tau" in line and "too large" in line and "400-digit" in line and "smaller value" in line
    assert len(line) < 200  # the number is abbreviated
    config = tmp_path / "grid.toml"
    config.write_text(f'methods = ["cibhash"]\nbits = [8]\n[params.cibhash]\ntau = {BIG}\n')
    result = invoke("run", "--config", config, "--results", results, "--quiet")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "cibhash.tau" in line and "too large" in line and "400-digit" in line and len(line) < 200
    assert not results.exists()


def test_a_config_integer_too_long_for_python_names_its_line(invoke, results, tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["itq"]\nbits = [8]\n[params.itq]\niterations = ' + "9" * 5000 + "\n")
    result = invoke("run", "--config", config, "--results", results, "--quiet")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert str(config) in line and "line 4" in line and "smaller value" in line
    assert not results.exists()


# -- 7. a plugin's parameter of type pathlib.Path ----------------------------------------------------

PATH_PLUGIN = '''
from dataclasses import dataclass, field
from pathlib import Path

from hashbench.method import HashingMethod
from hashbench.registry import register_method


@dataclass(frozen=True)
class TableParams:
    table: Path = Path("tables/default.txt")


@dataclass(frozen=True)
class DictParams:
    weights: dict = field(default_factory=lambda: {"a": 1})


class Base(HashingMethod):
    description = "signs of random projections"

    def fit(self, train, val=None):
        self.projection = self.context.rng().standard_normal((train.features.shape[1], self.bits))

    def encode(self, split):
        return split.features @ self.projection >= 0


@register_method
class WithTable(Base):
    name = "with-table"
    Params = TableParams

    def fit(self, train, val=None):
        assert isinstance(self.params.table, Path), type(self.params.table)
        super().fit(train, val)


@register_method
class WithDict(Base):
    name = "with-dict"
    Params = DictParams
'''


def test_a_path_parameter_is_recorded_as_its_text_and_read_back(invoke, results, tmp_path):
    import json

    from hashbench import registry
    from hashbench.params import params_to_dict, resolve_params

    plugin = tmp_path / "path_params.py"
    plugin.write_text(PATH_PLUGIN)
    for extra in ([], ["--set", "with-table.table=other/table.txt"]):
        result = invoke("--plugin", plugin, "run", "--methods", "with-table", "--bits", "8", "--results", results, "--quiet", *extra)
        assert result.exit_code == 0, result.output
    tables = sorted(json.loads(path.read_text())["params"]["table"] for path in results.glob("runs/*/run.json"))
    assert tables == ["other/table.txt", "tables/default.txt"]
    params_cls = registry.get_method("with-table").Params
    params = resolve_params(params_cls, {"table": "other/table.txt"}, owner="with-table")
    again = resolve_params(params_cls, json.loads(json.dumps(params_to_dict(params))), owner="with-table")
    assert again == params and isinstance(again.table, Path)  # as a worker rebuilds it: the same run key


def test_a_parameter_no_record_can_hold_is_refused_before_anything_is_written(invoke, results, tmp_path):
    plugin = tmp_path / "dict_params.py"
    plugin.write_text(PATH_PLUGIN)
    result = invoke("--plugin", plugin, "run", "--methods", "with-dict", "--bits", "8", "--results", results, "--quiet")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "with-dict.weights" in line and "dict" in line and "pathlib.Path" in line
    assert not results.exists()


# -- 8. upper bounds of the iteration, epoch and size parameters -----------------------------------


def test_a_400_digit_iteration_count_is_refused_with_the_range(invoke, results, tmp_path):
    result = invoke("run", "--methods", "itq", "--bits", "8", "--results", results, "--quiet", "--set", f"itq.iterations={BIG}")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "itq.iterations must be at most 100000" in line and "[0, 100000]" in line
    assert "(a 400-digit integer)" in line and len(line) < 200
    config = tmp_path / "grid.toml"
    config.write_text(f'methods = ["itq"]\nbits = [8]\n[params.itq]\niterations = {BIG}\n')
    result = invoke("run", "--config", config, "--results", results, "--quiet")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "itq.iterations must be at most 100000" in line and "(a 400-digit integer)" in line and len(line) < 200
    assert not results.exists()


@pytest.mark.parametrize(
    ("method", "param", "value", "message"),
    [
        ("bgan", "epochs", "100001", "bgan.epochs must be at most 100000, got 100001; give a value in [1, 100000]"),
        ("tbh", "batch_size", str(2**20 + 1), "tbh.batch_size must be at most 1048576"),
        ("cibhash", "eval_every", BIG, "cibhash.eval_every must be at most 100000"),
        ("bihalf", "batch_size", "1", "bihalf.batch_size must be at least 2 (pairs of items), got 1; give a value in [2, 1048576]"),
    ],
    ids=["bgan.epochs", "tbh.batch_size", "cibhash.eval_every", "bihalf.batch_size"],
)
def test_deep_method_counts_are_refused_beyond_their_range(invoke, results, method, param, value, message):
    result = invoke("run", "--methods", method, "--bits", "8", "--results", results, "--quiet", "--set", f"{method}.{param}={value}")
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result)
    assert not results.exists()


BOUNDED = {"iterations", "epochs", "eval_every", "lr_step", "batch_size", "hidden", "continuous", "k1", "k2", "image_size", "cpu_threads", "width"}


def test_every_iteration_epoch_and_size_parameter_of_a_builtin_method_has_an_upper_bound():
    from hashbench import registry
    from hashbench.params import declared_range

    checked = []
    for name in registry.methods.names():
        cls = registry.get_method(name)
        if not cls.__module__.startswith("hashbench.methods."):
            continue
        for item in dataclasses.fields(cls.Params):
            if item.name in BOUNDED:
                bounds = declared_range(item)
                assert bounds is not None and bounds.high is not None, f"{name}.{item.name} declares no upper bound"
                if item.default is not None and not isinstance(item.default, type(dataclasses.MISSING)):
                    assert bounds.admits(item.default), f"{name}.{item.name}: its default is outside its range"
                checked.append(f"{name}.{item.name}")
    assert {"itq.iterations", "bgan.epochs", "tbh.hidden", "cibhash.batch_size", "greedyhash.lr_step"} <= set(checked)
