"""The first hour with hashbench: the README's examples work as written, and the first
mistakes (a list written with spaces, a name in the wrong case) get a way out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
ENVIRONMENT = {**os.environ, "HASHBENCH_PROGRESS": "lines", "CUDA_VISIBLE_DEVICES": ""}


def _section(title: str) -> str:
    """The README section under the heading ``title``, up to the next heading (outside code)."""
    lines = README.read_text().splitlines()
    start = lines.index(title)
    fenced = False
    for end in range(start + 1, len(lines)):
        fenced ^= lines[end].startswith("```")
        if not fenced and lines[end].startswith("#"):
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def _block(section: str, language: str, first_line: str) -> str:
    """The code block of ``language`` in ``section`` whose first line is ``first_line``."""
    for match in re.finditer(rf"```{language}\n(.*?)```", section, re.S):
        if match.group(1).startswith(first_line):
            return match.group(1)
    raise AssertionError(f"no ```{language} block starting with {first_line!r} in the README section")


def _hashbench(*arguments, cwd: Path, environment: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hashbench", *map(str, arguments)],
        cwd=cwd, env=environment or ENVIRONMENT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _rows(output: str) -> list[list[str]]:
    """The body rows of the rich tables in ``output``, as lists of stripped cells."""
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in output.splitlines() if line.startswith("│")]


# ---- the guide's plugin passes its own conformance check -------------------------------------


def test_readme_plugin_example_passes_check_method(tmp_path):
    section = _section("## Adding a method")
    assert "require_fitted" in section and "NotFittedError" in section  # the guide explains them
    plugin = tmp_path / "my_hashing.py"
    plugin.write_text(_block(section, "python", "# my_hashing.py"))
    process = _hashbench("--plugin", plugin, "check-method", "median", cwd=tmp_path)
    assert process.returncode == 0, process.stdout + process.stderr
    assert "FAIL" not in process.stdout
    assert "ok   encode before fit: NotFittedError" in process.stdout


def test_readme_deep_method_example_is_short_public_and_trains(tmp_path):
    """The guide's deep method: under 150 lines, written against the public API only (no
    built-in method's module, no private module, no budget arithmetic), passing
    check-method, and trained for real on digits it beats random projections."""
    section = _section("### A deep method")
    source = _block(section, "python", "# noisy_contrast.py")
    assert len(source.splitlines()) <= 150
    imported = re.findall(r"^\s*(?:from|import) (hashbench[\w.]*)", source, re.M)
    assert imported and not [name for name in imported if ".methods" in name or "._" in name or name.split(".")[-1].startswith("_")]
    assert "len(train)" not in source and "ceil" not in source  # the base turns budgets into epochs
    (tmp_path / "noisy_contrast.py").write_text(source)
    checked = _hashbench("--plugin", "noisy_contrast.py", "check-method", "noisy-contrast", cwd=tmp_path)
    assert checked.returncode == 0 and "FAIL" not in checked.stdout, checked.stdout + checked.stderr
    ran = _hashbench(
        "--plugin", "noisy_contrast.py", "run", "--methods", "noisy-contrast,lsh", "--bits", "16",
        "--results", tmp_path / "results", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "results").glob("runs/*/run.json"))}
    assert records["noisy-contrast"]["training"]["settings"]["epochs"] == 50  # the tiny budget on digits
    assert records["noisy-contrast"]["metrics"]["map"] > records["lsh"]["metrics"]["map"]


# ---- the features dataset: documented, listed as what it is, checked where it is -------------


def test_readme_features_example_runs_as_written(invoke, tmp_path, monkeypatch):
    section = _section("### Any embedding file: `features:PATH`")
    for phrase in ("`train_labels`", "`neighbors`", "mAP@1000", "`declared`", "`standard-val`", "`query_size`", "`topk`"):
        assert phrase in section
    monkeypatch.chdir(tmp_path)
    (tmp_path / "make_embeddings.py").write_text(_block(section, "python", "# make_embeddings.py"))
    subprocess.run([sys.executable, "make_embeddings.py"], cwd=tmp_path, check=True, timeout=120)
    assert (tmp_path / "emb.npz").is_file()

    check = invoke("data", "check", "features:emb.npz")
    assert check.exit_code == 0, check.output
    assert f"emb from {tmp_path / 'emb.npz'}" in check.output  # where the file is, not "under data"
    assert "under data" not in check.output
    assert "OK: emb is ready to run." in check.output

    run = invoke("run", "--methods", "lsh,itq", "--datasets", "features:emb.npz", "--bits", "16,32", "--results", "results")
    assert run.exit_code == 0, run.output
    records = {(r["method"], r["bits"]): r for r in map(json.loads, map(Path.read_text, Path("results").glob("runs/*/run.json")))}
    assert len(records) == 4 and {r["dataset"] for r in records.values()} == {"emb"}
    assert "mAP@1000" in records["itq", 16]["protocol_description"]
    assert records["itq", 16]["split"]["sizes"] == {"query": 1000, "database": 4000, "train": 4000}
    # the numbers the README quotes
    assert records["itq", 16]["metrics"]["map"] == pytest.approx(0.65, abs=0.05)
    assert records["lsh", 16]["metrics"]["map"] == pytest.approx(0.24, abs=0.05)

    # the TOML example: no labels, its own settings
    import numpy as np

    np.save("vectors.npy", np.load("emb.npz")["features"])
    config = _block(section, "toml", "# emb.toml")
    tomllib.loads(config)
    Path("emb.toml").write_text(config)
    nn = invoke("run", "--config", "emb.toml", "--results", "nn-results")
    assert nn.exit_code == 0, nn.output
    (record, *_) = [json.loads(p.read_text()) for p in Path("nn-results").glob("runs/*/run.json")]
    assert record["dataset"] == "emb-nn" and "mAP@500" in record["protocol_description"]
    assert record["data"]["relevance"] == "neighbours" and record["data"]["metric"] == "cosine"


def test_data_check_of_a_missing_features_file_names_the_file_not_the_data_root(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("data", "check", "features:nowhere.npz")
    assert result.exit_code == 1
    assert str(tmp_path / "nowhere.npz") in result.output
    assert "go under the data root" not in result.output
    assert "[datasets.NAME]" in result.output  # the hint's brackets are text, not markup


def test_list_is_one_line_per_method_and_shows_features_as_an_embedding_file(invoke):
    from hashbench import registry

    result = invoke("list")
    assert result.exit_code == 0, result.output
    assert "0 (multi-label)" not in result.output
    rows = _rows(result.output)
    # the built-in methods (other tests of the session may have registered more), one row each
    methods = [name for name in registry.methods.names() if registry.methods.origin(name).startswith("entry point")]
    listed = [row for row in rows if row[0] in methods]
    assert sorted(row[0] for row in listed) == sorted(methods)
    assert {row[1] for row in listed} == {"deep", "shallow"}
    assert "iterations" not in result.output  # parameters are for `hashbench list METHOD`
    (features,) = [row for row in rows if row[0] == "features"]
    assert features[1] == "from the file" and "features:PATH" in features[3]
    (cifar,) = [row for row in rows if row[0] == "cifar10"]
    assert cifar[2] == "standard (+6 more)"


def test_list_piped_cuts_no_description_however_long_the_other_columns(invoke, monkeypatch):
    """Captured output is read by scripts: a long plugin name (150 characters) widens the name
    column, and every description still comes out whole on its one line."""
    from hashbench import registry
    from hashbench.methods.lsh import LSH

    long_name = "m" * 150
    description = "a plugin whose description is long enough to be cut " * 3
    plugin = type("LongNamed", (LSH,), {"name": long_name, "description": description.strip()})
    monkeypatch.setitem(registry.methods._entries, long_name, registry._Entry(plugin, "a test"))
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke("list")
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    (long_row,) = [row for row in rows if row[0] == long_name]
    assert long_row[3] == description.strip()
    (features,) = [row for row in rows if row[0] == "features"]
    assert features[3].endswith("(--datasets features:PATH)")
    assert "…" not in result.output


def test_list_method_shows_parameters_with_defaults_ranges_and_profile_values(invoke):
    result = invoke("list", "bgan")
    assert result.exit_code == 0, result.output
    rows = {row[0]: row for row in _rows(result.output) if row[0]}
    header = next(line for line in result.output.splitlines() if "parameter" in line and "default" in line)
    assert "paper" in header and "tiny" in header
    assert rows["k1"][1] == "None (the profile's)" and rows["k1"][3:5] == ["20", "5"]  # paper 20, tiny 5
    assert rows["batch_size"][1] == "40" and "at least 2" in rows["batch_size"][2]
    assert rows["profile"][2] == "auto | paper | tiny"
    itq = invoke("list", "itq")
    assert itq.exit_code == 0 and any(row[:2] == ["iterations", "50"] for row in _rows(itq.output))


def test_list_dataset_shows_its_protocols(invoke, tmp_path, monkeypatch):
    result = invoke("list", "cifar10")
    assert result.exit_code == 0, result.output
    protocols = [row[0] for row in _rows(result.output) if row[0]]
    assert protocols[0] == "standard (default)"
    assert {"cibhash-code", "tbh-code", "bihalf-code-i", "standard-val"} <= set(protocols)

    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.save("plain.npy", np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    file = invoke("list", "features:plain.npy")  # a file's own protocols: no labels, so no standard-val
    assert file.exit_code == 0, file.output
    assert [row[0] for row in _rows(file.output) if row[0]] == ["standard (default)"]
    assert "nearest neighbours" in file.output
    unknown = invoke("list", "ITQ")
    assert unknown.exit_code == 2 and "did you mean itq" in unknown.output


def test_list_of_one_method_imports_no_heavy_library():
    code = (
        "import sys\nfrom hashbench.cli import main\nsys.argv = ['hashbench', 'list', 'cibhash']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code\n"
        "print([name for name in ('torch', 'torchvision', 'scipy', 'pandas', 'matplotlib') if name in sys.modules])\n"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENVIRONMENT, check=True)
    assert "beta" in process.stdout
    assert process.stdout.strip().splitlines()[-1] == "[]"


# ---- first mistakes get a way out --------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "status"])
def test_a_list_written_with_spaces_suggests_commas(invoke, command, tmp_path):
    result = invoke(command, "--methods", "lsh", "--bits", "16", "32", "--results", tmp_path / "results")
    assert result.exit_code == 2
    assert "unexpected extra argument (32)" in result.output
    assert "lists take commas, not spaces: --bits 16,32" in result.output
    assert not (tmp_path / "results").exists()


def test_names_in_the_wrong_case_get_a_suggestion(invoke, tmp_path):
    results = tmp_path / "results"
    method = invoke("run", "--methods", "ITQ", "--bits", "8", "--results", results)
    assert method.exit_code == 2 and "unknown method 'ITQ'; did you mean itq?" in method.output
    dataset = invoke("run", "--methods", "itq", "--datasets", "CIFAR10", "--bits", "8", "--results", results)
    assert dataset.exit_code == 2 and "unknown dataset 'CIFAR10'; did you mean cifar10?" in dataset.output
    assert invoke("run", "--methods", "lsh", "--bits", "8", "--results", results, "--quiet").exit_code == 0
    metric = invoke("report", "--results", results, "--out", tmp_path / "report", "--metric", "mAP")
    assert metric.exit_code == 2 and "did you mean 'map'?" in metric.output


# ---- an interrupted cell says what it is; a resumed run says that it resumes ------------------


def test_status_shows_an_interrupted_cell_by_method_dataset_bits_and_seed(invoke, tmp_path):
    from hashbench.cli.status import CHECKPOINT_NAME as STATUS_NAME
    from hashbench.toolkit.training import CHECKPOINT_NAME

    assert STATUS_NAME == CHECKPOINT_NAME
    results = tmp_path / "results"
    key = "cibhash-fashion-mnist-standard-val-split0-16b-seed2-0123456789"
    (results / "runs" / key).mkdir(parents=True)
    (results / "runs" / key / CHECKPOINT_NAME).write_bytes(b"")
    result = invoke("status", "--results", results)
    assert result.exit_code == 0, result.output
    (row,) = [row for row in _rows(result.output) if row[0]]
    assert row[:6] == ["cibhash", "fashion-mnist", "standard-val", "16", "2", "interrupted"]
    assert "resumes it from its checkpoint" in row[6]


def test_a_killed_deep_run_resumes_and_says_so(tmp_path):
    arguments = ["run", "--methods", "greedyhash", "--bits", "8", "--device", "cpu", "--set", "greedyhash.epochs=2",
                 "--results", tmp_path / "results"]  # fmt: skip
    killed = _hashbench(*arguments, cwd=tmp_path, environment={**ENVIRONMENT, "HASHBENCH_KILL_AFTER_EPOCH": "1"})
    assert killed.returncode == -9, killed.stderr  # SIGKILL right after epoch 1's checkpoint
    status = _hashbench("status", "--results", tmp_path / "results", cwd=tmp_path)
    (row,) = [row for row in _rows(status.stdout) if row[0]]
    assert row[:6] == ["greedyhash", "digits", "standard", "8", "0", "interrupted"]

    resumed = _hashbench(*arguments, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming greedyhash-digits-standard-split0-8b-seed0 from epoch 1 of 2" in resumed.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("runs/*/run.json")]
    assert record["status"] == "ok" and record["training"]["resumed_from_epoch"] == 1


def test_every_test_the_readme_cites_exists():
    """The README backs its guarantees with named tests: each `file.py::test_name` it cites is a
    test function of that file (a renamed or deleted test would leave a guarantee unbacked)."""
    cited = set(re.findall(r"`(test_\w+\.py)::(test_\w+)(?:\[[^\]]*\])?`", README.read_text()))
    assert len(cited) >= 20
    missing = []
    for file, name in sorted(cited):
        source = (Path(__file__).parent / file).read_text() if (Path(__file__).parent / file).is_file() else ""
        if not re.search(rf"^def {name}\(", source, re.M):
            missing.append(f"{file}::{name}")
    assert not missing, f"the README cites tests that do not exist: {missing}"
