"""Plugin registry: entry points, --plugin, duplicate and unknown names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hashbench import registry
from hashbench.errors import UserError
from hashbench.method import HashingMethod

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_plugin_source() -> str:
    text = README.read_text()
    match = re.search(r"```python\n(# my_hashing\.py\n.*?)```", text, re.S)
    assert match, "README must hold the 'Adding a method' example"
    return match.group(1)


def test_builtins_register_through_entry_points():
    for name in ("lsh", "pcah", "itq", "sh"):
        assert "entry point" in registry.methods.origin(name)
        assert registry.get_method(name).name == name
    assert "entry point" in registry.datasets.origin("digits")


def test_unknown_method_suggests_close_names():
    with pytest.raises(UserError, match=r"unknown method 'itqq'; did you mean itq"):
        registry.get_method("itqq")
    with pytest.raises(UserError, match=r"unknown dataset 'digit'; did you mean digits"):
        registry.get_dataset("digit")


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    class Impostor(HashingMethod):
        name = "itq"

        def fit(self, train, val=None):
            pass

        def encode(self, split):
            pass

    with pytest.raises(UserError) as error:
        registry.register_method(Impostor)
    message = str(error.value)
    assert "hashbench.methods.itq:ITQ" in message and "Impostor" in message


def test_duplicate_from_plugin_file_is_reported_by_the_cli(tmp_path, invoke):
    plugin = tmp_path / "clash.py"
    plugin.write_text(
        "from hashbench.method import HashingMethod\n"
        "from hashbench.registry import register_method\n"
        "@register_method\n"
        "class Clash(HashingMethod):\n"
        "    name = 'lsh'\n"
        "    def fit(self, train, val=None): pass\n"
        "    def encode(self, split): pass\n"
    )
    result = invoke("--plugin", plugin, "list")
    assert result.exit_code == 2
    assert "two plugins claim the method name 'lsh'" in result.output
    assert "Traceback" not in result.output


def test_missing_plugin_is_a_clear_error(invoke):
    result = invoke("--plugin", "no_such_module_xyz", "list")
    assert result.exit_code == 2
    assert "--plugin no_such_module_xyz: module not found" in result.output


def test_readme_plugin_example_runs_through_plugin_option(tmp_path, invoke, monkeypatch):
    plugin = tmp_path / "my_hashing.py"
    plugin.write_text(_readme_plugin_source())
    monkeypatch.chdir(tmp_path)
    listing = invoke("--plugin", "my_hashing.py", "list")
    assert listing.exit_code == 0, listing.output
    assert "median" in listing.output
    result = invoke(
        "--plugin", "my_hashing.py", "run", "--methods", "median,itq", "--bits", "32",
        "--set", "median.scale=2", "--results", tmp_path / "results",
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/run.json")]
    by_method = {record["method"]: record for record in records}
    assert by_method["median"]["status"] == "ok"
    assert by_method["median"]["params"] == {"scale": 2.0}
    # Median thresholds balance the bits, so the codes carry real information.
    assert by_method["median"]["metrics"]["map"] > 0.3


def test_dotted_plugin_path(tmp_path, invoke, monkeypatch):
    package = tmp_path / "localpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "median_mod.py").write_text(_readme_plugin_source().replace('"median"', '"median2"'))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [*sys.path])
    result = invoke("--plugin", "localpkg.median_mod", "list")
    assert result.exit_code == 0, result.output
    assert "median2" in result.output


def _installed_package(root: Path, entry_points: str) -> None:
    """A package installed in ``root`` (its dist-info with these entry points): what pip leaves."""
    info = root / "brokenplugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_a_broken_installed_plugin_is_a_warning_and_the_others_keep_working(tmp_path):
    """A plugin that raises on import, one that names nothing, and one that is no method class:
    `list` warns about each in one line and shows the built-ins; a grid of built-ins runs
    without importing them; asking for a broken one by name says why, in one line."""
    site = tmp_path / "site"
    _installed_package(
        site,
        "[hashbench.methods]\nexploding = brokenplugin_raises:Method\nmissing = brokenplugin_absent:Method\n"
        "notamethod = brokenplugin_thing:thing\n",
    )
    (site / "brokenplugin_raises.py").write_text("raise RuntimeError('this plugin is broken')\n")
    (site / "brokenplugin_thing.py").write_text("thing = 42\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    def hashbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hashbench", *args], capture_output=True, text=True, env=env, timeout=300)

    listed = hashbench("list")
    assert listed.returncode == 0, listed.stderr
    assert "│ itq " in listed.stdout and "│ cibhash " in listed.stdout
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, listed.stderr
    assert any("'exploding'" in line and "RuntimeError: this plugin is broken" in line and "brokenplugins" in line for line in warnings)
    assert any("'missing'" in line and "ModuleNotFoundError" in line for line in warnings)
    assert any("'notamethod'" in line and "not a subclass of hashbench.method.HashingMethod" in line for line in warnings)
    assert "Traceback" not in listed.stderr

    ran = hashbench("run", "--methods", "itq", "--bits", "8", "--results", str(tmp_path / "results"), "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert "warning" not in ran.stderr  # only what the grid names is imported

    asked = hashbench("run", "--methods", "exploding", "--bits", "8", "--results", str(tmp_path / "other"))
    assert asked.returncode == 2
    (line,) = [line for line in asked.stderr.splitlines() if line.startswith("Error:")]
    assert "'exploding'" in line and "cannot be loaded: RuntimeError: this plugin is broken" in line and "uninstall" in line
    assert "Traceback" not in asked.stderr
    assert not (tmp_path / "other").exists()


def test_registering_something_that_is_not_a_method_class_is_refused(tmp_path, invoke):
    plugin = tmp_path / "notaclass.py"
    plugin.write_text(
        "from hashbench.registry import register_method\n"
        "class Looks:\n    name = 'looks-like-one'\n    description = 'not a HashingMethod'\n"
        "register_method(Looks)\n"
    )
    result = invoke("--plugin", plugin, "list")
    assert result.exit_code == 2
    assert "not a subclass of hashbench.method.HashingMethod" in result.output
