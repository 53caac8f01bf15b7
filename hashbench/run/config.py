"""Experiment config files (TOML): the same settings as the ``run`` options, plus tables.

```toml
description = "what this grid is for"   # shown by nothing; for the reader
methods = ["lsh", "itq"]
datasets = ["digits"]
bits = [16, 32, 64]
seeds = [0, 1, 2]
split_seed = 0
protocol = "standard"        # optional: one protocol for every dataset
results = "results"          # relative to the working directory, like the options
data_root = "data"
cache = "data/.hashbench-cache"   # decoded images and backbone features
drop_bad_rows = false
device = "auto"
plugins = ["my_methods.py"]  # like --plugin
executor = "local"           # or "slurm"
jobs = 1                     # worker processes of the local executor
# cell_timeout = 3600          # seconds: a longer cell is stopped and recorded as failed

[protocols]                  # optional: dataset → protocol, wins over `protocol`
cifar10 = "standard"

[method_protocols.cibhash]   # optional: this method's own protocol on a dataset, wins over both
cifar10 = "cibhash-code"

[params.itq]                 # per-method hyperparameters
iterations = 50

[slurm]                      # used with executor = "slurm" only
partition = "gpu"
gpus_per_run = 1
time_limit = 720             # minutes
mem_gb = 32
cpus_per_run = 8
array_parallelism = 32
```

Datasets are a list of names, or a table of tables, one per dataset, which also holds the
settings of the datasets that take some (an embedding file: see ``datasets/features.py``):

```toml
[datasets.sift]              # the dataset "sift"; kind = "features" unless given
path = "data/sift-128-euclidean.hdf5"
neighbours = 100

[datasets.digits]            # a built-in dataset: no settings
```
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from hashbench.errors import UserError

_LIST_KEYS = {"methods": str, "datasets": str, "bits": int, "seeds": int, "plugins": str}
# Lists that must hold something (an empty one would make a grid of no cells), with an example.
_NON_EMPTY = {"methods": '["lsh"]', "datasets": '["digits"]', "bits": "[16, 32, 64]", "seeds": "[0]"}
# An experiment file is a few hundred bytes; anything this large is not one.
MAX_CONFIG_BYTES = 1 << 20
# Settings naming a folder: an empty string would be the working directory, unasked for.
_FOLDER_KEYS = ("results", "data_root", "cache")
# Python reads integers of at most this many digits (tomllib raises ValueError beyond).
_INT_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
_SCALAR_KEYS = {
    "description": str,
    "split_seed": int,
    "protocol": str,
    "results": str,
    "data_root": str,
    "cache": str,
    "drop_bad_rows": bool,
    "device": str,
    "force": bool,
    "executor": str,
    "jobs": int,
    "cell_timeout": float,  # seconds
}
# Keys of the [slurm] table and their types (float where submitit takes fractions).
SLURM_KEYS: dict[str, type] = {
    "partition": str,
    "gpus_per_run": int,
    "time_limit": int,
    "mem_gb": float,
    "cpus_per_run": int,
    "array_parallelism": int,
    "account": str,
    "qos": str,
    "constraint": str,
    "folder": str,
}
EXECUTORS = ("local", "slurm")
# A cell time limit above a year is a typo, not a limit.
MAX_CELL_TIMEOUT = 366 * 24 * 3600.0


def _check_type(value: Any, expected: type, where: str) -> Any:
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return value
    if expected is not int and not isinstance(value, expected):
        raise UserError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


_FOLDER_EXAMPLES = {"results": "results", "data_root": "data", "cache": "data/.hashbench-cache"}


def _refuse_repeats(items: list[Any], where: str, key: str) -> None:
    """A grid names each method, dataset, code length and seed once: a repeat would be the
    same cells twice."""
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            once = ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in dict.fromkeys(items))
            shown = f'"{item}"' if isinstance(item, str) else str(item)
            raise UserError(f"{where}: {shown} is listed twice; name each once: {key} = [{once}]")
        seen.add(item)


def _string_table(value: Any, where: str, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise UserError(f"{where}: expected a table of {what}")
    return dict(value)


def _slurm_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a table [slurm] of setting = value")
    table = {}
    for key, item in value.items():
        if key not in SLURM_KEYS:
            raise UserError(f"{where}.{key}: unknown setting; known settings: {', '.join(SLURM_KEYS)}")
        table[key] = _check_type(item, SLURM_KEYS[key], f"{where}.{key}")
        if SLURM_KEYS[key] in (int, float) and table[key] <= 0:
            raise UserError(f"{where}.{key}: must be positive, got {item!r}")
    return table


def _read_text(path: Path) -> str:
    """The file's text; anything that is not a readable UTF-8 text file is one clear error."""
    if path.is_dir():
        raise UserError(f"--config {path}: is a folder; name a TOML experiment file (see experiments/)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise UserError(f"--config {path}: cannot read it ({error.strerror or error})") from error
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(
            f"--config {path}: larger than {MAX_CONFIG_BYTES // 1024} KiB, so not an experiment file; "
            "name a TOML experiment file (see experiments/)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(
            f"--config {path}: not UTF-8 text (byte {error.start}, line {line}); "
            "a config file is TOML text (see experiments/), saved as UTF-8"
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise UserError(f"--config {path}: holds a NUL byte (line {line}), so it is not a text file; name a TOML experiment file")
    return text


def load_config(path: Path) -> dict[str, Any]:
    """Read and check a config file (paths in it are relative to the working directory)."""
    path = Path(path)
    text = _read_text(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message ends with "(at line L, column C)", or "(at end of document)"
        # for something left open, which is then named by the file's last line.
        message = str(error).replace("(at end of document)", f"(at end of document, line {max(1, len(text.splitlines()))})")
        raise UserError(f"{path}: not valid TOML: {message}") from error
    except ValueError:  # an integer of more digits than Python reads (4300)
        long_number = re.search(rf"\d[\d_]{{{max(_INT_DIGITS - 1, 1)},}}", text)
        where = f"line {text[: long_number.start()].count(chr(10)) + 1}: " if long_number else ""
        raise UserError(
            f"{path}: {where}an integer of more than {_INT_DIGITS} digits, far beyond any setting; give a smaller value"
        ) from None
    if not raw:
        what = "is empty" if not text.strip() else "holds no settings"
        raise UserError(f"{path}: {what}; write at least methods = [...] (see experiments/digits-quick.toml)")
    config: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}: {key}"
        if key == "datasets" and isinstance(value, dict):
            if not value:
                raise UserError(f"{where}: an empty table runs nothing; add [datasets.NAME] tables, or datasets = {_NON_EMPTY[key]}")
            for name, table in value.items():
                if not isinstance(table, dict):
                    raise UserError(f"{where}.{name}: expected a table [datasets.{name}] of setting = value")
            config["datasets"] = list(value)
            config["dataset_options"] = {name: dict(table) for name, table in value.items()}
        elif key in _LIST_KEYS:
            items = value if isinstance(value, list) else [value]
            if not items and key in _NON_EMPTY:
                raise UserError(f"{where}: an empty list runs nothing; give at least one, e.g. {key} = {_NON_EMPTY[key]}")
            config[key] = [_check_type(item, _LIST_KEYS[key], where) for item in items]
            if key in _NON_EMPTY:
                _refuse_repeats(config[key], where, key)
        elif key in _SCALAR_KEYS:
            config[key] = _check_type(value, _SCALAR_KEYS[key], where)
            if key in _FOLDER_KEYS and not value.strip():
                raise UserError(
                    f"{where}: an empty path would be the working directory; name a folder "
                    f'(e.g. {key} = "{_FOLDER_EXAMPLES[key]}"), or "." to mean the working directory'
                )
        elif key == "params":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise UserError(f"{where}: expected tables [params.METHOD] of parameter = value")
            config["params"] = value
        elif key == "protocols":
            config["protocols"] = _string_table(value, where, "dataset = \"protocol name\"")
        elif key == "method_protocols":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise UserError(f"{where}: expected tables [method_protocols.METHOD] of dataset = \"protocol name\"")
            config["method_protocols"] = {
                method: _string_table(table, f"{where}.{method}", "dataset = \"protocol name\"")
                for method, table in value.items()
            }
        elif key == "slurm":
            config["slurm"] = _slurm_table(value, where)
        else:
            known = ", ".join([*_LIST_KEYS, *_SCALAR_KEYS, "params", "protocols", "method_protocols", "slurm"])
            raise UserError(f"{where}: unknown setting; known settings: {known}")
    if "executor" in config and config["executor"] not in EXECUTORS:
        raise UserError(f"{path}: executor: expected one of {', '.join(EXECUTORS)}, got {config['executor']!r}")
    if "jobs" in config and config["jobs"] < 1:
        raise UserError(f"{path}: jobs: must be at least 1, got {config['jobs']}")
    if "cell_timeout" in config:
        timeout = config["cell_timeout"]
        if not 0 < timeout <= MAX_CELL_TIMEOUT:  # also refuses NaN
            raise UserError(
                f"{path}: cell_timeout: seconds, more than 0 and at most {MAX_CELL_TIMEOUT:g} (a year), got {timeout!r}"
            )
        config["cell_timeout"] = float(timeout)
    return config
