"""``hashbench list``: the registered methods and datasets, one line each; ``hashbench list
NAME``: one method's parameters (defaults, allowed values, profile values) or one dataset's
protocols."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hashbench import registry
from hashbench.errors import UserError

# What a dataset's protocol column may take before it says "(+N more)".
_PROTOCOL_WIDTH = 28
# Module-level tables of a method's profile values, where its module declares them.
_PROFILE_TABLES = ("PAPER", "TINY")


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "required"


_UNCUT_WIDTH = 10_000  # wider than any row: a table that does not expand takes only what it needs


def _console() -> Console:
    console = Console()
    if not console.is_terminal:  # piped or captured: one line per row, not folded into 80 columns
        console.width = max(console.width, 160)
    return console


def method_kind(cls: Any) -> str:
    """``deep`` for a method trained through the deep-method layer (profiles, a trainer),
    else ``shallow``."""
    return "deep" if callable(getattr(cls, "profile_settings", None)) else "shallow"


def _dataset_labels(cls: Any) -> str:
    if getattr(cls, "argument_setting", None) is not None:  # a configured dataset: what its file holds
        return "from the file"
    return f"{len(cls.classes)}, {'multi' if cls.multi_label else 'single'}-label"


def _protocol_names(cls: Any) -> list[str]:
    return [cls.default_protocol, *sorted(set(cls.protocols) - {cls.default_protocol})]


@click.command("list")
@click.argument("name", required=False)
def list_command(name: str | None) -> None:
    """Show the registered methods and datasets, one line each.

    With NAME, one method's parameters (default, allowed values, profile values) or one
    dataset's protocols (features:PATH: those of that file).
    """
    console = _console()
    if name is None:
        _overview(console)
    elif name in registry.methods.names():
        _method(console, name)
    elif name in registry.datasets.names() or ":" in name:
        _dataset(console, name)
    else:
        known = [*registry.methods.names(), *registry.datasets.names()]
        close = registry.close_names(name, known)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"no method or dataset {name!r}; {hint}`hashbench list` shows them all")


def _one_line_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    """One line per row: every column but the last (the description) at its full width, the
    description cut with an ellipsis where the terminal is too narrow."""
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns[:-1]):
        width = max([len(column), *(len(row[index]) for row in rows)])
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column(columns[-1], no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def _print_one_line_table(console: Console, table: Table) -> None:
    """On a terminal the description is cut to fit; piped or captured, nothing is cut (a script
    reading the list gets every description whole, however long the other columns are)."""
    if not console.is_terminal:
        console = Console(width=_UNCUT_WIDTH)  # print's own width cannot exceed the console's
    console.print(table)


def _overview(console: Console) -> None:
    methods = []
    for name in registry.methods.names():
        cls = registry.get_method(name)
        methods.append((name, method_kind(cls), cls.input, cls.description))
    _print_one_line_table(console, _one_line_table("methods", ("name", "kind", "input", "description"), methods))
    datasets = []
    for name in registry.datasets.names():
        cls = registry.get_dataset(name)
        protocols = _protocol_names(cls)
        shown = ", ".join(protocols)
        if len(shown) > _PROTOCOL_WIDTH and len(protocols) > 1:
            shown = f"{protocols[0]} (+{len(protocols) - 1} more)"
        datasets.append((name, _dataset_labels(cls), shown, cls.description))
    _print_one_line_table(
        console, _one_line_table("datasets", ("name", "labels", "protocols (default first)", "description"), datasets)
    )
    click.echo("`hashbench list NAME` shows a method's parameters or a dataset's protocols.")


# ---- one method -------------------------------------------------------------------------


def _type_text(annotation: Any) -> tuple[str, bool]:
    """The values a type annotation admits, in words, and whether None is one of them."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        texts = [_type_text(arg)[0] for arg in options]
        return " or ".join(texts), type(None) in args
    if origin is typing.Literal:
        return " | ".join(str(arg) for arg in args), False
    if origin is tuple:
        return f"list of {_type_text(args[0])[0] if args else 'values'} (a,b,...)", False
    names = {bool: "true | false", int: "integer", float: "number", str: "text"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation))), False


def _allowed(field: dataclasses.Field, annotation: Any) -> str:
    from hashbench.params import declared_range

    text, optional = _type_text(annotation)
    bounds = declared_range(field)
    if bounds is not None and bounds.text:
        rule = bounds.text.removeprefix("be ").removeprefix("lie ")
        text += f", {rule}"
    return text + (", or None" if optional else "")


def field_notes(params_cls: type) -> dict[str, str]:
    """The comments beside each field of ``params_cls`` (and its bases) in its source: the
    comment on the field's line and the comment lines right above it."""
    import inspect
    import io
    import textwrap
    import tokenize

    notes: dict[str, str] = {}
    for klass in reversed(params_cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        comments: dict[int, str] = {}
        try:
            for token in tokenize.generate_tokens(io.StringIO(source).readline):
                if token.type == tokenize.COMMENT:
                    comments[token.start[0] - 1] = token.string.lstrip("#").strip()
        except (tokenize.TokenError, IndentationError, SyntaxError):
            continue
        own = {spec.name for spec in dataclasses.fields(klass)} & set(vars(klass).get("__annotations__", {}))
        for index, line in enumerate(lines):
            stripped = line.strip()
            head = stripped.split(":", 1)[0].strip()
            if head not in own or not stripped.startswith(head):
                continue
            above = []
            row = index - 1
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, comments.get(row, ""))
                row -= 1
            parts = [text for text in (*above, comments.get(index) if not stripped.startswith("#") else None) if text]
            notes[head] = " ".join(parts)
    return notes


def _profile_fields(params_cls: type) -> set[str]:
    """Fields of the classes of ``params_cls`` whose own docstring says that None takes the
    profile's value."""
    owned: set[str] = set()
    for klass in params_cls.__mro__:
        doc = vars(klass).get("__doc__") or ""
        if dataclasses.is_dataclass(klass) and "the profile's" in doc:
            owned |= set(vars(klass).get("__annotations__", {}))
    return owned


def _method(console: Console, name: str) -> None:
    cls = registry.get_method(name)
    console.print(f"[bold]{escape(name)}[/bold]: {escape(cls.description)}", highlight=False)
    console.print(
        f"kind {method_kind(cls)} · input {cls.input} · version {cls.version} · from {escape(registry.methods.origin(name))}",
        highlight=False,
    )
    fields = dataclasses.fields(cls.Params)
    if not fields:
        console.print("no parameters")
        return
    hints = typing.get_type_hints(cls.Params)
    module = sys.modules.get(cls.__module__)
    profiles = {
        table.lower(): getattr(module, table)
        for table in _PROFILE_TABLES
        if isinstance(getattr(module, table, None), dict)
    }
    notes = field_notes(cls.Params)
    table = Table(title=f"parameters (--set {name}.NAME=VALUE)", title_justify="left")
    table.add_column("parameter", no_wrap=True)
    table.add_column("default", no_wrap=True)
    table.add_column("allowed values")
    for profile in profiles:
        table.add_column(profile, no_wrap=True)
    table.add_column("note")
    deep = any(spec.name == "profile" for spec in fields)
    from_profile = _profile_fields(cls.Params) | {key for profile in profiles.values() for key in profile}
    for spec in fields:
        default = _default(spec)
        shown = repr(default)
        if default is None and (spec.name in from_profile or "the profile's" in notes.get(spec.name, "")):
            shown = "None (the profile's)"
        values = [
            repr(profile[spec.name]) if spec.name in profile and profile[spec.name] is not None else ""
            for profile in profiles.values()
        ]
        table.add_row(spec.name, escape(shown), escape(_allowed(spec, hints[spec.name])), *values, escape(notes.get(spec.name, "")))
    console.print(table)
    if deep:
        console.print(
            "profile: paper (the released settings and training budgets) or tiny (a CPU default for tiny images); "
            "auto chooses from the dataset. The record's training.settings says what a run resolved.",
            highlight=False,
        )


# ---- one dataset ------------------------------------------------------------------------


def _dataset(console: Console, name: str) -> None:
    cls = registry.get_dataset(name)
    plugin = cls()
    plugin.protocol(None)  # a configured file: reads what its protocols need
    console.print(f"[bold]{escape(plugin.name)}[/bold]: {escape(cls.description)}", highlight=False)
    origin = getattr(cls, "configured_where", None) or registry.datasets.origin(plugin.name)
    console.print(f"labels {_dataset_labels(cls)} · from {escape(origin)}", highlight=False)
    path = getattr(getattr(plugin, "settings", None), "path", None)
    layout = getattr(plugin, "layout_help", "")
    if path is not None:
        console.print(f"file: {escape(str(path))}", highlight=False)
    elif layout:
        console.print(f"files: {escape(layout)}", highlight=False)
    table = Table(title="protocols (--protocol NAME)", title_justify="left")
    table.add_column("protocol", no_wrap=True)
    table.add_column("mAP@k", justify="right", no_wrap=True)
    table.add_column("description")
    for protocol_name in _protocol_names(plugin):
        protocol = plugin.protocol(protocol_name)
        label = protocol_name + (" (default)" if protocol_name == plugin.default_protocol else "")
        table.add_row(label, str(getattr(protocol, "topk", "")), escape(getattr(protocol, "description", "")))
    console.print(table)
