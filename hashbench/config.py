"""Experiment config files (TOML): the same settings as the ``run`` options.

```toml
methods = ["lsh", "itq"]
datasets = ["digits"]
bits = [16, 32, 64]
seeds = [0, 1, 2]
split_seed = 0
protocol = "standard"        # optional
results = "results"          # relative to the working directory, like the options
data_root = "data"
device = "auto"

[params.itq]
iterations = 50
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hashbench.errors import UserError

_LIST_KEYS = {"methods": str, "datasets": str, "bits": int, "seeds": int}
_SCALAR_KEYS = {"split_seed": int, "protocol": str, "results": str, "data_root": str, "device": str, "force": bool}


def _check_type(value: Any, expected: type, where: str) -> Any:
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if expected is not int and not isinstance(value, expected):
        raise UserError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def load_config(path: Path) -> dict[str, Any]:
    """Read and check a config file (paths in it are relative to the working directory)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"--config {path}: cannot read it ({error.strerror})") from error
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message ends with "(at line L, column C)".
        raise UserError(f"{path}: not valid TOML: {error}") from error
    config: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}: {key}"
        if key in _LIST_KEYS:
            items = value if isinstance(value, list) else [value]
            config[key] = [_check_type(item, _LIST_KEYS[key], where) for item in items]
        elif key in _SCALAR_KEYS:
            config[key] = _check_type(value, _SCALAR_KEYS[key], where)
        elif key == "params":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise UserError(f"{where}: expected tables [params.METHOD] of parameter = value")
            config["params"] = value
        else:
            known = ", ".join([*_LIST_KEYS, *_SCALAR_KEYS, "params"])
            raise UserError(f"{where}: unknown setting; known settings: {known}")
    return config
