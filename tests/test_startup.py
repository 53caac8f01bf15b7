"""Start-up stays light: listing methods, reading a results directory's status and describing
every registered method import none of the heavy libraries (torch alone takes seconds to
import on a small machine). Each check runs in a fresh interpreter, where ``sys.modules``
shows everything the command imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("torch", "torchvision", "scipy", "pandas", "matplotlib", "numba", "pydantic")

# Runs the CLI in-process with the given arguments, then prints the heavy modules it imported
# as the last line of output.
CLI = f"""
import json, sys
from hashbench.cli import main
sys.argv = ["hashbench", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    if exit.code:
        raise
print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)))
"""

DESCRIBE = f"""
import dataclasses, json, sys
from hashbench import registry
described = {{}}
for name in registry.methods.names():
    cls = registry.get_method(name)
    fields = {{field.name: repr(field.default) for field in dataclasses.fields(cls.Params)}}
    described[name] = [cls.version, cls.description, cls.input, fields]
print(json.dumps(described))
print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)))
"""


def _run(code: str, *args: str) -> list[str]:
    process = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HASHBENCH_PROGRESS": "quiet"},
    )
    assert process.returncode == 0, process.stderr
    return process.stdout.strip().splitlines()


def test_list_imports_no_heavy_library():
    lines = _run(CLI, "list")
    assert any("cibhash" in line for line in lines)  # the deep methods were loaded and listed
    assert json.loads(lines[-1]) == []


def test_status_imports_no_heavy_library(tmp_path):
    results = tmp_path / "results"
    subprocess.run(
        [sys.executable, "-m", "hashbench", "run", "--methods", "lsh", "--datasets", "digits", "--bits", "8",
         "--results", str(results), "--data-root", str(tmp_path / "data"), "--quiet"],
        check=True, capture_output=True, env={**os.environ, "HASHBENCH_PROGRESS": "quiet"},
    )  # fmt: skip
    lines = _run(CLI, "status", "--results", str(results))
    assert any("ok 1" in line for line in lines)
    # pydantic checks each record it reads (the run record's schema): about 0.2 s, once
    assert json.loads(lines[-1]) == ["pydantic"]


def test_describing_every_method_imports_no_heavy_library():
    *output, heavy = _run(DESCRIBE)
    described = json.loads(output[-1])
    assert {"cibhash", "clhash", "tbh", "bgan", "greedyhash", "bihalf", "lsh"} <= set(described)
    assert described["cibhash"][0] == "3" and described["cibhash"][3]["beta"] == "0.001"
    assert json.loads(heavy) == []
