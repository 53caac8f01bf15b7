"""``hashbench eval`` driven through click's test runner and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashbench.cli import cli
from hashbench.metrics import evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    arrays = {
        "query_codes": rng.integers(0, 2, (15, 12)) * 2 - 1,  # {-1, +1}
        "database_codes": rng.integers(0, 2, (120, 12)).astype(np.uint8),  # {0, 1}
        "query_labels": rng.integers(0, 4, 15),  # class ids
        "database_labels": np.eye(4, dtype=np.uint8)[rng.integers(0, 4, 120)],  # multi-hot
    }
    paths = {}
    for name, array in arrays.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], array)
    return paths


def options(files: dict[str, Path], **override: object) -> list[str]:
    args = []
    for name, path in {**files, **override}.items():
        if path is not None:
            args += ["--" + name.replace("_", "-"), str(path)]
    return args


def run(args: list[str]):
    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


def expected(files: dict[str, Path], **kwargs):
    arrays = [
        np.load(files[name])
        for name in ("query_codes", "database_codes", "query_labels", "database_labels")
    ]
    return evaluate(*arrays, **kwargs).to_dict()


def test_json_output_matches_the_api(files):
    result = run([*options(files), "--topk", "30", "--ks", "1,5,200", "--radius", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in (
        "map",
        "map_tie_aware",
        "map_optimistic",
        "map_pessimistic",
        "map_all",
        "precision_radius3",
        "recall_radius3",
        "pr_curve",
    ):
        assert key in data
    assert list(data["precision_at_k"]) == ["1", "5", "200"]
    assert data == expected(files, topk=30, ks=(1, 5, 200), radius=3)


def test_table_output(files):
    result = run([*options(files), "--topk", "30"])
    assert result.exit_code == 0, result.output
    assert "mAP@30 tie-aware" in result.output
    assert "precision within radius 2" in result.output


def test_npz_with_packed_codes_and_separate_labels(files, tmp_path):
    query = np.load(files["query_codes"]) > 0
    database = np.load(files["database_codes"]) > 0
    archive = tmp_path / "codes.npz"
    np.savez(
        archive,
        query_codes=np.packbits(query, axis=1),
        database_codes=np.packbits(database, axis=1),
    )
    args = [
        "--npz",
        str(archive),
        "--query-labels",
        str(files["query_labels"]),
        "--database-labels",
        str(files["database_labels"]),
        "--json",
    ]
    result = run([*args, "--bits", "12"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected(files)
    # without --bits the packed codes are refused with a hint
    result = run(args)
    assert result.exit_code == 2
    assert "--bits" in result.output and "codes.npz" in result.output


def test_npz_with_all_four_arrays(files, tmp_path):
    archive = tmp_path / "all.npz"
    np.savez(archive, **{name: np.load(path) for name, path in files.items()})
    result = run(["--npz", str(archive), "--json", "--topk", "10"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected(files, topk=10)


def bad_inputs(files: dict[str, Path], tmp_path: Path):
    rng = np.random.default_rng(1)

    def save(name: str, array) -> Path:
        path = tmp_path / name
        np.save(path, array)
        return path

    text = tmp_path / "text.npy"
    text.write_text("not numpy")
    zeros = np.load(files["query_codes"]).copy()
    zeros[0, 0] = 0
    nan = np.load(files["query_codes"]).astype(float)
    nan[1, 1] = np.nan
    archive = tmp_path / "arch.npz"
    np.savez(archive, query_codes=np.zeros((2, 2)))
    return [
        (options(files, query_codes=tmp_path / "missing.npy"), "missing.npy does not exist"),
        (options(files, database_codes=text), "text.npy is not an .npy file"),
        (options(files, database_codes=archive), "--npz"),
        (options(files, query_codes=save("zeros.npy", zeros)), "zeros.npy"),
        (options(files, query_codes=save("nan.npy", nan)), "NaN"),
        (options(files, query_codes=save("short.npy", rng.integers(0, 2, (15, 10)))), "bits"),
        (options(files, query_codes=save("flat.npy", rng.integers(0, 2, 15))), "2-D"),
        (options(files, query_labels=save("fewer.npy", rng.integers(0, 4, 14))), "fewer.npy"),
        (
            options(
                files,
                query_labels=save("narrow.npy", np.eye(4)[rng.integers(0, 4, 15)]),
                database_labels=save("wide.npy", np.eye(5)[rng.integers(0, 5, 120)]),
            ),
            "classes",
        ),
        (options(files, query_labels=save("strings.npy", np.array(["a"] * 15))), "strings.npy"),
        (options(files, database_labels=None), "--database-labels"),
        ([*options(files), "--topk", "0"], "--topk"),
        ([*options(files), "--ks", "1,x"], "--ks"),
        ([*options(files), "--bits", "-3"], "--bits"),
        ([*options(files), "--radius", "two"], "--radius"),
        (["--npz", str(tmp_path / "none.npz")], "none.npz"),
    ]


def test_each_bad_input_is_one_clear_line(files, tmp_path):
    for args, fragment in bad_inputs(files, tmp_path):
        result = run(args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith("Error: ") and fragment in lines[0], (fragment, lines[0])


def test_one_column_labels_are_refused_naming_the_file(files, tmp_path):
    labels = tmp_path / "column.npy"
    np.save(labels, np.load(files["query_labels"])[:, None] % 2)
    result = run(options(files, query_labels=labels))
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: query labels ({labels}) have shape (15, 1)")
    assert "class ids" in line and "multi-hot" in line and "(n,)" in line and "C >= 2" in line


@pytest.mark.parametrize("bits", [256, 65537])
def test_long_packed_codes(tmp_path, bits):
    # codes near all-zeros and all-ones: distances up to `bits`, many ties
    rng = np.random.default_rng(bits)
    far = rng.random(40) < 0.5
    database = np.zeros((40, bits), dtype=bool)
    database[far] = True
    database[:, :3] ^= rng.random((40, 3)) < 0.3
    query = np.zeros((4, bits), dtype=bool)
    query[1::2] = True
    query_labels = rng.integers(0, 3, 4)
    database_labels = rng.integers(0, 3, 40)
    paths = {}
    arrays = {
        "query_codes": np.packbits(query, axis=1),
        "database_codes": np.packbits(database, axis=1),
        "query_labels": query_labels,
        "database_labels": database_labels,
    }
    for name, array in arrays.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], array)
    result = run([*options(paths), "--bits", str(bits), "--topk", "10", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    aps = []
    for q in range(4):  # brute force: stable sort of the distances
        distances = (query[q] != database).sum(1)
        ranked = (database_labels == query_labels[q])[np.argsort(distances, kind="stable")][:10]
        hits = np.cumsum(ranked)
        aps.append((hits / np.arange(1, 11))[ranked].sum() / hits[-1] if hits[-1] else 0.0)
    assert data["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert data["bits"] == bits and len(data["pr_curve"]["radius"]) == bits + 1


def test_subprocess_end_to_end(files, tmp_path):
    command = [sys.executable, "-c", "from hashbench.cli import main; main()", "eval"]
    ok = subprocess.run(
        [*command, *options(files), "--topk", "20", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == expected(files, topk=20)
    bad = subprocess.run(
        [*command, *options(files, query_codes=tmp_path / "gone.npy")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"Error: --query-codes: file {tmp_path / 'gone.npy'} does not exist"
    ]
    assert "Traceback" not in bad.stderr
