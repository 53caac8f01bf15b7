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

[sweep.cibhash]              # optional: a grid axis per parameter (several: their product)
tau = [0.1, 0.3, 1.0]        # each value checked as [params] values are

# [[sweep.cibhash]]          # or several tables: the union of their products
# beta = [0.0001, 0.001]

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
from functools import cache
from pathlib import Path
from typing import Any

from hashbench.errors import UserError

# An experiment file is a few hundred bytes; anything this large is not one.
MAX_CONFIG_BYTES = 1 << 20
# Python reads integers of at most this many digits (tomllib raises ValueError beyond).
_INT_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
EXECUTORS = ("local", "slurm")
# A cell time limit above a year is a typo, not a limit.
MAX_CELL_TIMEOUT = 366 * 24 * 3600.0
# Lists that must hold something (an empty one would make a grid of no cells), with an example.
_NON_EMPTY = {"methods": '["lsh"]', "datasets": '["digits"]', "bits": "[16, 32, 64]", "seeds": "[0]"}
# Settings naming a folder: an empty string would be the working directory, unasked for.
_FOLDER_EXAMPLES = {"results": "results", "data_root": "data", "cache": "data/.hashbench-cache"}
# What the tables of tables hold, by table and depth, for messages.
_TABLE_HINTS = {
    ("protocols", 1): 'a table of dataset = "protocol name"',
    ("method_protocols", 1): 'tables [method_protocols.METHOD] of dataset = "protocol name"',
    ("method_protocols", 2): 'a table of dataset = "protocol name"',
    ("params", 1): "tables [params.METHOD] of parameter = value",
    ("sweep", 1): "tables [sweep.METHOD] of parameter = [values]",
    ("sweep", 2): "a table of parameter = [values]",
}
_TYPE_WORDS = {
    "int_type": "an integer", "float_type": "a number", "string_type": "str", "bool_type": "bool",
    "list_type": "a list", "dict_type": "a table", "model_type": "a table",
}


@cache
def schema() -> type:
    """The experiment file's settings as a pydantic model (built on first use: pydantic is
    imported by ``load_config`` only, never by ``hashbench list`` or ``--help``)."""
    from typing import Annotated, Literal

    from pydantic import (
        BaseModel,
        ConfigDict,
        Discriminator,
        Field,
        Tag,
        ValidationInfo,
        WrapValidator,
        field_validator,
    )
    from pydantic_core import PydanticCustomError

    def keep_int(value: Any, handler: Any) -> Any:  # a number setting keeps an integer as written
        checked = handler(value)
        return value if type(value) is int else checked

    strict = ConfigDict(strict=True, extra="forbid")
    Positive = Annotated[int, Field(gt=0)]
    PositiveNumber = Annotated[float, Field(gt=0), WrapValidator(keep_int)]

    def one_or_many(value: Any) -> Any:  # methods = "lsh" means methods = ["lsh"]
        return value if isinstance(value, (list, dict)) else [value]

    def form(value: Any) -> str:
        return "tables" if isinstance(value, dict) else "list"

    Datasets = Annotated[
        Annotated[list[str], Tag("list")] | Annotated[dict[str, dict[str, Any]], Tag("tables")], Discriminator(form)
    ]

    # [sweep.METHOD] (one table: the product of its lists) or [[sweep.METHOD]] (several: the
    # union of their products), tagged like the datasets' two forms
    Sweep = Annotated[
        Annotated[dict[str, list[Any]], Tag("list")] | Annotated[list[dict[str, list[Any]]], Tag("tables")],
        Discriminator(lambda value: "tables" if isinstance(value, list) else "list"),
    ]

    class Slurm(BaseModel):
        """The [slurm] table (float where submitit takes fractions)."""

        model_config = strict
        partition: str | None = None
        gpus_per_run: Positive | None = None
        time_limit: Positive | None = None  # minutes
        mem_gb: PositiveNumber | None = None
        cpus_per_run: Positive | None = None
        array_parallelism: Positive | None = None
        account: str | None = None
        qos: str | None = None
        constraint: str | None = None
        folder: str | None = None

    class Experiment(BaseModel):
        model_config = strict
        methods: list[str] | None = None
        datasets: Datasets | None = None
        bits: list[int] | None = None
        seeds: list[int] | None = None
        plugins: list[str] | None = None
        description: str | None = None
        split_seed: int | None = None
        protocol: str | None = None
        results: str | None = None
        data_root: str | None = None
        cache: str | None = None
        drop_bad_rows: bool | None = None
        device: str | None = None
        force: bool | None = None
        executor: Literal[EXECUTORS] | None = None
        jobs: Annotated[int, Field(ge=1)] | None = None
        cell_timeout: Annotated[float, Field(gt=0, le=MAX_CELL_TIMEOUT)] | None = Field(
            None, description="seconds: more than 0, at most a year"
        )
        sweep: dict[str, Sweep] | None = None
        params: dict[str, dict[str, Any]] | None = None
        protocols: dict[str, str] | None = None
        method_protocols: dict[str, dict[str, str]] | None = None
        slurm: Slurm | None = None

        _lists = field_validator("methods", "datasets", "bits", "seeds", "plugins", mode="before")(one_or_many)

        @field_validator("methods", "datasets", "bits", "seeds")
        @classmethod
        def _once_each(cls, items: Any, info: ValidationInfo) -> Any:
            """A grid names each method, dataset, code length and seed once: a repeat would be
            the same cells twice; and an empty list would be a grid of no cells."""
            key = info.field_name
            if not items:
                what = "table runs nothing; add [datasets.NAME] tables, or" if isinstance(items, dict) else (
                    "list runs nothing; give at least one, e.g."
                )
                raise PydanticCustomError("empty", f"an empty {what} {key} = {_NON_EMPTY[key]}")
            if isinstance(items, list) and len(set(items)) < len(items):
                shown = [f'"{x}"' if isinstance(x, str) else str(x) for x in items]
                repeat = next(s for i, s in enumerate(shown) if s in shown[:i])
                once = ", ".join(dict.fromkeys(shown))
                raise PydanticCustomError("repeated", f"{repeat} is listed twice; name each once: {key} = [{once}]")
            return items

        @field_validator("sweep")
        @classmethod
        def _sweep_values(cls, tables: Any) -> Any:
            """[sweep.METHOD] (one table) or [[sweep.METHOD]] (several): each PARAM = [values]
            names at least one value."""
            for method, given in tables.items():
                for table in given if isinstance(given, list) else [given]:
                    for name, values in table.items():
                        if not values:
                            raise PydanticCustomError(
                                "empty", f"{method}.{name} = [] sweeps nothing; give at least one value, e.g. {name} = [value, value]"
                            )
            return tables

        @field_validator("results", "data_root", "cache")
        @classmethod
        def _a_folder(cls, value: str, info: ValidationInfo) -> str:
            if not value.strip():
                raise PydanticCustomError(
                    "empty_path",
                    f"an empty path would be the working directory; name a folder "
                    f'(e.g. {info.field_name} = "{_FOLDER_EXAMPLES[info.field_name]}"), or "." to mean the working directory',
                )
            return value

    return Experiment


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def schema_message(error: Any, where: str, model: type) -> str:
    """One line for the first error of a pydantic ValidationError: ``WHERE: KEY: what was
    wrong; how to fix it``, KEY dotted (``slurm.time_limit``, ``datasets.emb``)."""
    first = error.errors()[0]
    kind, value, context = first["type"], first.get("input"), first.get("ctx") or {}
    # the tags of the datasets' two forms are not keys; list positions are not named either
    tagged = 2 if first["loc"][:1] == ("sweep",) else 1  # where the two forms' tag sits in the location
    loc = [part for i, part in enumerate(first["loc"]) if isinstance(part, str) and not (i == tagged and part in ("list", "tables"))]
    key, fields = ".".join(loc), model.model_fields
    for part in loc[:-1]:  # the model holding the last key, for its known settings
        annotation = fields[part].annotation if part in fields else None
        inner = [a for a in getattr(annotation, "__args__", ()) if hasattr(a, "model_fields")]
        fields = inner[0].model_fields if inner else {}
    container = loc if len(loc) == 1 else loc[:-1]
    if (loc[0], len(container)) in _TABLE_HINTS and kind.endswith("_type"):
        got = f"{value!r}" if len(loc) == 1 else f"{key} = {value!r}"
        return f"{where}: {'.'.join(container)}: expected {_TABLE_HINTS[loc[0], len(container)]}, got {got}"
    if kind == "extra_forbidden":
        return f"{where}: {key}: unknown setting; known settings: {', '.join(fields)}"
    if kind == "missing":
        return f"{where}: {key}: missing; add {key} = ..."
    if kind in ("dict_type", "model_type"):
        return f"{where}: {key}: expected a table [{key}] of setting = value, got {value!r}"
    if kind in _TYPE_WORDS:
        return f"{where}: {key}: expected {_TYPE_WORDS[kind]}, got {value!r}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", context.get("expected", ""))
        return f"{where}: {key}: expected one of {', '.join(choices)}, got {value!r}"
    bounds = {"greater_than": "more than", "greater_than_equal": "at least", "less_than": "less than", "less_than_equal": "at most"}
    if kind in bounds:
        limit = next(iter(context.values()))
        what = "positive" if kind == "greater_than" and limit == 0 else f"{bounds[kind]} {_number(limit)}"
        info = fields.get(loc[-1])
        unit = f" ({info.description})" if info is not None and info.description else ""
        return f"{where}: {key}: must be {what}{unit}, got {value!r}"
    return f"{where}: {key}: {first['msg']}"  # the validators' own messages (repeats, empty lists)


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
    from pydantic import ValidationError

    model = schema()
    try:
        checked = model.model_validate(raw).model_dump(exclude_unset=True)
    except ValidationError as error:
        raise UserError(schema_message(error, str(path), model)) from None
    config = {key: checked[key] for key in raw}  # in the file's order
    if isinstance(config.get("datasets"), dict):
        config["dataset_options"] = config["datasets"]
        config["datasets"] = list(config["dataset_options"])
    if "slurm" in config:
        config["slurm"] = {key: value for key, value in config["slurm"].items() if value is not None}
    return config
