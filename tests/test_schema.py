"""The experiment file's schema (pydantic): wrong types, unknown keys, ranges and repeats are
one line naming the file and the key; a valid file reads as the hand-written checks read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hashbench.errors import UserError
from hashbench.run.config import load_config

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
# What the hand-written checks that came before the schema read from the files of VALID
# (recorded with them; JSON keeps key order and int/float/bool/str apart). A file added or
# changed since is recorded as tomllib reads it, which is what the schema must return for a
# file without [datasets.NAME] tables.
AS_READ = Path(__file__).resolve().parent / "data" / "experiment_files_as_read.json"


def _refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "grid.toml"
    path.write_text('methods = ["lsh"]\n' + text)
    with pytest.raises(UserError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[slurm]\ntime_limit = "1h"\n', "slurm.time_limit: expected an integer, got '1h'"),
        ("[slurm]\ngpus_per_run = true\n", "slurm.gpus_per_run: expected an integer, got True"),
        ('jobs = "2"\n', "jobs: expected an integer, got '2'"),
        ("split_seed = 1.5\n", "split_seed: expected an integer, got 1.5"),
        ("drop_bad_rows = 1\n", "drop_bad_rows: expected bool, got 1"),
        ("cell_timeout = true\n", "cell_timeout: expected a number, got True"),
        ("device = 0\n", "device: expected str, got 0"),
        ("bits = [8, \"16\"]\n", "bits: expected an integer, got '16'"),
        ("slurm = 3\n", "slurm: expected a table [slurm] of setting = value, got 3"),
        ('[datasets]\nemb = "x.npy"\n', "datasets.emb: expected a table [datasets.emb] of setting = value"),
        ('executor = "kubernetes"\n', "executor: expected one of local, slurm, got 'kubernetes'"),
    ],
)
def test_a_wrong_type_names_the_key(tmp_path, text, expected):
    assert expected in _refused(tmp_path, text)


def test_an_unknown_key_lists_the_known_ones(tmp_path):
    message = _refused(tmp_path, "[slurm]\npartitions = 'gpu'\n")
    assert "slurm.partitions: unknown setting; known settings: partition, gpus_per_run, time_limit" in message
    message = _refused(tmp_path, "method = 'lsh'\n")
    assert "method: unknown setting; known settings: methods, datasets, bits, seeds, plugins, description" in message
    assert message.endswith("params, protocols, method_protocols, slurm")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[slurm]\nmem_gb = 0\n", "slurm.mem_gb: must be positive, got 0"),
        ("[slurm]\ntime_limit = -5\n", "slurm.time_limit: must be positive, got -5"),
        ("jobs = 0\n", "jobs: must be at least 1, got 0"),
        ("cell_timeout = 0\n", "cell_timeout: must be positive (seconds: more than 0, at most a year), got 0"),
        ("cell_timeout = 1e9\n", "cell_timeout: must be at most 3.16224e+07 (seconds: more than 0, at most a year), got 1000000000.0"),
        ("cell_timeout = nan\n", "(seconds: more than 0, at most a year), got nan"),
    ],
)
def test_an_out_of_range_value_names_the_key_and_the_range(tmp_path, text, expected):
    assert expected in _refused(tmp_path, text)


def test_a_repeated_list_item_is_refused(tmp_path):
    assert "bits: 16 is listed twice; name each once: bits = [16, 32]" in _refused(tmp_path, "bits = [16, 32, 16]\n")
    path = tmp_path / "twice.toml"
    path.write_text('methods = ["lsh", "itq", "lsh"]\n')
    with pytest.raises(UserError, match='methods: "lsh" is listed twice; name each once: methods = \\["lsh", "itq"\\]'):
        load_config(path)


def test_the_tables_of_tables_keep_their_messages(tmp_path):
    assert 'protocols: expected a table of dataset = "protocol name", got protocols.digits = 3' in _refused(
        tmp_path, "[protocols]\ndigits = 3\n"
    )
    assert "params: expected tables [params.METHOD] of parameter = value, got params.itq = 3" in _refused(
        tmp_path, "params = { itq = 3 }\n"
    )


def test_a_number_keeps_its_type_and_a_scalar_is_a_list(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('methods = "lsh"\nbits = 8\ncell_timeout = 60\n[slurm]\nmem_gb = 32\n[params.itq]\nx = 1e400\n')
    config = load_config(path)
    assert config["methods"] == ["lsh"] and config["bits"] == [8]
    assert type(config["slurm"]["mem_gb"]) is int and type(config["cell_timeout"]) is float
    assert config["params"] == {"itq": {"x": float("inf")}}


FILES = sorted(EXPERIMENTS.glob("*.toml"))
VALID = [
    *FILES,
    'methods = ["lsh"]\n[datasets.sift]\npath = "sift.hdf5"\nneighbours = 10\n[datasets.digits]\n',
    'methods = "lsh"\ndatasets = "digits"\nbits = 8\nseeds = [1]\nplugins = []\nforce = true\ndrop_bad_rows = false\n'
    'jobs = 3\ncell_timeout = 5\nexecutor = "local"\ncache = "c"\ndata_root = "d"\nprotocol = "standard"\n'
    '[method_protocols.itq]\ndigits = "standard"\n[slurm]\npartition = "gpu"\nmem_gb = 4.5\nfolder = "f"\n',
]


@pytest.mark.parametrize("index", range(len(VALID)), ids=lambda i: VALID[i].name if isinstance(VALID[i], Path) else f"inline-{i - len(FILES)}")
def test_a_valid_file_reads_as_the_hand_written_checks_read_it(tmp_path, index):
    source = VALID[index]
    if isinstance(source, str):
        path, name = tmp_path / "grid.toml", f"inline-{VALID.index(source) - len(FILES)}"
        path.write_text(source)
    else:
        path, name = source, source.name
    old, new = json.loads(AS_READ.read_text())[name], load_config(path)
    assert new == old
    assert list(new) == list(old)
    assert {key: type(value) for key, value in new.items()} == {key: type(value) for key, value in old.items()}
    for table in ("slurm", "dataset_options"):
        if table in old:
            assert {k: type(v) for k, v in new[table].items()} == {k: type(v) for k, v in old[table].items()}


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"path": "x.npy", "topk": "10"}, "[datasets.x]: topk must be a positive integer, got '10'"),
        ({"path": "x.npy", "topk": True}, "[datasets.x]: topk must be a positive integer, got True"),
        ({"path": "x.npy", "val_size": 0}, "[datasets.x]: val_size must be a positive integer, got 0"),
        ({"path": 3}, "[datasets.x]: path must be a string, got 3"),
        ({"path": "x.npy", "labels": 0}, "labels must name an array or column, or be false, got 0"),
        ({"path": "x.npy", "split": "half"}, "split 'half': expected one of declared, standard, standard-val"),
        ({"path": "x.npy", "size": 3}, "[datasets.x]: unknown setting 'size'; known settings: column, format, ground_truth"),
    ],
)
def test_a_features_table_is_checked_by_the_schema(table, expected):
    from hashbench.datasets.features import FeatureSettings

    with pytest.raises(UserError) as error:
        FeatureSettings.from_table(table, "[datasets.x]")
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_features_table_keeps_its_values():
    from hashbench.datasets.features import FeatureSettings

    settings = FeatureSettings.from_table({"path": "x.npy", "labels": False, "neighbours": 7, "metric": "cosine"}, "t")
    assert settings.labels is False and settings.neighbours == 7 and settings.metric == "cosine"
    assert settings.path == str(Path("x.npy").resolve()) and settings.topk == 1000
