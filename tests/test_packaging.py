"""A regular (wheel) install holds the plugins under hashbench.* and registers them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_plugins_under_the_core_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("hashbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hashbench/methods/itq.py" in names and "hashbench/datasets/digits.py" in names
    assert not any(name.startswith(("methods/", "datasets/")) for name in names)
    # Every subpackage of the core ships (the package list in pyproject.toml is explicit).
    for init in (ROOT / "hashbench").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[hashbench.methods]" in text and "itq = hashbench.methods.itq:ITQ" in text

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Run from an unrelated folder with only the installed copy first on the path.
    probe = (
        "import hashbench, hashbench.registry as r; "
        "print(hashbench.__file__); print(r.methods.names()); print(r.datasets.names())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    location, methods, datasets = result.stdout.splitlines()
    assert location.startswith(str(target))
    assert all(name in methods for name in ("'itq'", "'lsh'", "'pcah'", "'sh'")) and "'digits'" in datasets
