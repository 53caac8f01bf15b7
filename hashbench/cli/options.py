"""Option types shared by the commands."""

from __future__ import annotations

import click


class CommaList(click.ParamType):
    """``a,b,c`` → ``["a", "b", "c"]``; with ``item=int`` each item must be an integer ≥ ``minimum``."""

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
            return parts
        numbers = []
        for part in parts:
            try:
                number = int(part)
            except ValueError:
                self.fail(f"{part!r} is not an integer", param, ctx)
            if self.minimum is not None and number < self.minimum:
                self.fail(f"{number} is below the minimum of {self.minimum}", param, ctx)
            numbers.append(number)
        return numbers


NAMES = CommaList(str)
POSITIVE_INTS = CommaList(int, minimum=1)
NON_NEGATIVE_INTS = CommaList(int, minimum=0)
