"""``hashbench list``: the registered methods and datasets."""

from __future__ import annotations

import dataclasses

import click
from rich.console import Console
from rich.table import Table

from hashbench import registry


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "required"


@click.command("list")
def list_command() -> None:
    """Show registered methods and datasets with one-line descriptions."""
    console = Console()
    methods = Table(title="methods", title_justify="left")
    for column in ("name", "input", "parameters", "description"):
        methods.add_column(column)
    for name in registry.methods.names():
        cls = registry.get_method(name)
        params = ", ".join(f"{field.name}={_default(field)!r}" for field in dataclasses.fields(cls.Params))
        methods.add_row(name, cls.input, params or "-", cls.description)
    console.print(methods)
    datasets = Table(title="datasets", title_justify="left")
    for column in ("name", "classes", "protocols (default first)", "description"):
        datasets.add_column(column)
    for name in registry.datasets.names():
        cls = registry.get_dataset(name)
        protocols = [cls.default_protocol, *sorted(set(cls.protocols) - {cls.default_protocol})]
        label = "multi-label" if cls.multi_label else "single-label"
        datasets.add_row(name, f"{len(cls.classes)} ({label})", ", ".join(protocols), cls.description)
    console.print(datasets)
