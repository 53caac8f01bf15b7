"""Option types shared by the commands."""

from __future__ import annotations

import os
from pathlib import Path

import click


class CommaList(click.ParamType):
    """``a,b,c`` → ``["a", "b", "c"]``; with ``item=int`` each item must be an integer ≥ ``minimum``.

    Each item may be given once: a grid listing ``16,16`` would make the same cells twice.
    """

    def __init__(self, item: type = str, minimum: int | None = None) -> None:
        self.item = item
        self.minimum = minimum
        self.name = "list" if item is str else "integers"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if not parts or any(not part for part in parts):
            self.fail(f"{value!r} is not a comma-separated list (no empty items)", param, ctx)
        if self.item is str:
            return self._once(parts, param, ctx)
        numbers = []
        for part in parts:
            try:
                number = int(part)
            except ValueError:
                self.fail(f"{part!r} is not an integer", param, ctx)
            if self.minimum is not None and number < self.minimum:
                self.fail(f"{number} is below the minimum of {self.minimum}", param, ctx)
            numbers.append(number)
        return self._once(numbers, param, ctx)

    def _once(self, items: list, param, ctx) -> list:
        """``items``, refused when one of them is repeated."""
        seen = set()
        for item in items:
            if item in seen:
                option = f"{param.opts[0]} " if isinstance(param, click.Option) else ""
                once = ",".join(str(value) for value in dict.fromkeys(items))
                self.fail(f"{item} is given twice; name each once: {option}{once}", param, ctx)
            seen.add(item)
        return items


class FolderPath(click.Path):
    """A folder option's path; an empty one (``--results ''``, an unset shell variable) would
    silently be the working directory, so it is refused."""

    def __init__(self, example: str) -> None:
        super().__init__(file_okay=False, path_type=Path)
        self.example = example

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            option = param.opts[0] if isinstance(param, click.Option) else "the folder"
            self.fail(
                f"an empty path would be the working directory; name a folder (e.g. {option} {self.example}), "
                f"or {option} . to mean the working directory",
                param,
                ctx,
            )
        return super().convert(value, param, ctx)


NAMES = CommaList(str)
POSITIVE_INTS = CommaList(int, minimum=1)
NON_NEGATIVE_INTS = CommaList(int, minimum=0)


# Options several commands share, declared once.
RESULTS_OPTION = click.option(
    "--results",
    type=FolderPath("results"),
    help="Results directory. Default: $HASHBENCH_RESULTS or ./results.",
)
DATA_ROOT_OPTION = click.option(
    "--data-root",
    type=FolderPath("data"),
    help="Where datasets live. Default: $HASHBENCH_DATA or ./data.",
)


def results_dir(option: Path | None) -> Path:
    """--results, else $HASHBENCH_RESULTS, else ./results."""
    return option if option is not None else Path(os.environ.get("HASHBENCH_RESULTS") or "results")


def data_root(option: Path | None) -> Path:
    """--data-root, else $HASHBENCH_DATA, else ./data."""
    return option if option is not None else Path(os.environ.get("HASHBENCH_DATA") or "data")
