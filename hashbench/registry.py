"""Registry of method and dataset plugins.

Built-ins register exactly as third-party packages do, through the entry-point groups
``hashbench.methods`` and ``hashbench.datasets``. A local module can be imported with
``--plugin module.path`` (or a ``.py`` file); it registers its classes with the
:func:`register_method` / :func:`register_dataset` decorators.

Configured datasets. A dataset plugin that takes settings (``features``: any embedding
file) is named in a grid as ``KIND:ARGUMENT`` (``features:emb.npz``) or by the name of a
``[datasets.NAME]`` table of the experiment file; :func:`resolve_datasets` turns such
entries into dataset classes registered under a name that is safe in file names (the
file's stem, or the table's name). The plugin declares ``argument_setting`` (what ARGUMENT
sets), ``default_name(argument)`` and ``configured(name, settings, where)``, which returns
a subclass carrying the checked ``settings``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from hashbench.errors import UserError

METHOD_GROUP = "hashbench.methods"
DATASET_GROUP = "hashbench.datasets"


@dataclass
class _Entry:
    obj: Any
    origin: str  # where the plugin came from, for error messages


@dataclass
class Registry:
    """Name → plugin class, for one kind of plugin (methods or datasets)."""

    kind: str  # "method" or "dataset"
    group: str
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _entry_points_loaded: bool = False

    def add(self, name: str, obj: Any, origin: str) -> None:
        check_file_name(self.kind, name, origin)
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not obj:
            raise UserError(
                f"two plugins claim the {self.kind} name {name!r}: {existing.origin} and {origin}; "
                "rename one of them or uninstall one package"
            )
        self._entries[name] = _Entry(obj, origin)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for point in entry_points(group=self.group):
            origin = f"entry point {point.value!r}"
            if point.dist is not None:
                origin += f" of package {point.dist.name}"
            try:
                obj = point.load()
            except Exception as error:  # a broken third-party plugin must not hide the others
                raise UserError(f"cannot load {self.kind} plugin {point.name!r} ({origin}): {error}") from error
            self.add(point.name, obj, origin)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, name: str) -> Any:
        self._load_entry_points()
        entry = self._entries.get(name)
        if entry is None:
            known = sorted(self._entries)
            close = close_names(name, known)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            nearby = [path for path in (Path(f"{name}.py"), Path(f"{name.replace('-', '_')}.py")) if path.is_file()]
            if nearby:
                hint += f"{nearby[0]} is here: load it with --plugin {nearby[0]}; "
            raise UserError(
                f"unknown {self.kind} {name!r}; {hint}known {self.kind}s: {', '.join(known) or 'none'} "
                f"(`hashbench list` shows them)"
            )
        return entry.obj

    def origin(self, name: str) -> str:
        self.get(name)
        return self._entries[name].origin


def close_names(name: str, known: Sequence[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The names of ``known`` closest to ``name``, compared without regard to case (``ITQ``
    suggests ``itq``); a name equal but for its case comes first."""
    lowered: dict[str, list[str]] = {}
    for candidate in known:
        lowered.setdefault(candidate.lower(), []).append(candidate)
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=cutoff)
    return [candidate for match in close for candidate in lowered[match]][:n]


def check_file_name(kind: str, name: Any, origin: str) -> None:
    """Refuse a plugin's name (a method's, a dataset's, a protocol's) that cannot name a file:
    it becomes part of run folders and split manifests."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise UserError(
            f"{origin}: {kind} name {name!r} cannot be used: it names files, so use letters, digits, "
            "'.', '_' and '-', starting with a letter or digit (e.g. my-method.v2)"
        )


methods = Registry("method", METHOD_GROUP)
datasets = Registry("dataset", DATASET_GROUP)


def _origin_of(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_method(cls: Any) -> Any:
    """Class decorator registering a method under ``cls.name`` (for local plugins)."""
    methods.add(cls.name, cls, _origin_of(cls))
    return cls


def register_dataset(cls: Any) -> Any:
    """Class decorator registering a dataset under ``cls.name`` (for local plugins)."""
    datasets.add(cls.name, cls, _origin_of(cls))
    return cls


def get_method(name: str) -> Any:
    return methods.get(name)


def get_dataset(name: str) -> Any:
    """The dataset class of a registered name or of ``KIND:ARGUMENT`` (configured here)."""
    if ":" in name and name not in datasets._entries:
        name = resolve_datasets([name])[0]
    return datasets.get(name)


# Configured datasets registered so far: name → the plugin kind and settings they came from.
_configured: dict[str, tuple[str, Any]] = {}
DEFAULT_KIND = "features"  # the plugin of a [datasets.NAME] table without `kind`
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _configured_class(kind: str, name: str, settings: Mapping[str, Any], where: str) -> Any:
    """The dataset class of plugin ``kind`` configured with ``settings``, to be named ``name``."""
    plugin = datasets.get(kind)
    if not callable(getattr(plugin, "configured", None)):
        raise UserError(f"{where}: dataset {kind} takes no settings; drop them, or name a plugin that does (features)")
    if not _SAFE_NAME.fullmatch(name):
        raise UserError(f"{where}: dataset name {name!r}: use letters, digits, '.', '_' and '-' (it names files)")
    if name in datasets._entries and name not in _configured:
        raise UserError(
            f"{where}: the dataset name {name!r} belongs to {datasets.origin(name)}; give this one another "
            f"name with a [datasets.NAME] table"
        )
    return plugin.configured(name, settings, where)


def resolve_datasets(entries: Sequence[str], tables: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The dataset names of a grid, registering the configured datasets among ``entries``.

    An entry is a registered name (``digits``), ``KIND:ARGUMENT`` (``features:emb.npz``: the
    plugin configured with ARGUMENT, named by it after the file; a ``[datasets.NAME]`` table of
    that name adds its other settings) or the name of a table (``kind`` defaults to
    ``features``). Every process that runs cells of the grid calls this with the same entries
    and tables (relative paths resolve from the working directory).
    """
    tables = dict(tables or {})
    names: list[str] = []
    chosen: dict[str, tuple[str, Any, str]] = {}  # name → kind, settings, entry
    for entry in entries:
        kind, sep, argument = entry.partition(":")
        if sep:
            plugin = datasets.get(kind)
            setting = getattr(plugin, "argument_setting", None)
            if setting is None or not argument:
                form = f"{kind}:{setting.upper()}" if setting else kind
                raise UserError(f"dataset {entry!r}: write {form}" if setting else f"dataset {entry!r}: {kind} takes no argument")
            name = plugin.default_name(argument)
            table = dict(tables.get(name, {}))
            where = entry
            if table:
                table.pop("kind", None)
                if setting in table and (
                    plugin.configured(name, table, f"[datasets.{name}]").settings
                    != plugin.configured(name, {**table, setting: argument}, entry).settings
                ):
                    raise UserError(
                        f"{entry} is named {name!r}, like the table [datasets.{name}], which names another "
                        f"{setting}; give the table another name, or list it by name instead"
                    )
                where = f"{entry} with [datasets.{name}]"
            settings = {**table, setting: argument}
        elif entry in tables and (tables[entry] or entry not in datasets.names()):
            settings = dict(tables[entry])
            kind = settings.pop("kind", DEFAULT_KIND)
            if not isinstance(kind, str):
                raise UserError(f"[datasets.{entry}]: kind must be a dataset plugin name, got {kind!r}")
            name, where = entry, f"[datasets.{entry}]"
        else:
            names.append(entry)  # a registered name (checked by the runner)
            continue
        cls = _configured_class(kind, name, settings, where)
        if name in chosen and chosen[name][:2] != (kind, cls.settings):
            raise UserError(
                f"two datasets of the grid are named {name!r} ({chosen[name][2]} and {entry}); "
                "name them with [datasets.NAME] tables"
            )
        chosen[name] = (kind, cls.settings, entry)
        # A configured name is this process's current meaning of it: a later grid may change it.
        datasets._entries[name] = _Entry(cls, where)
        _configured[name] = (kind, cls.settings)
        if name not in names:
            names.append(name)
    return names


def configuration(name: str) -> dict[str, Any] | None:
    """How the configured dataset ``name`` was made (its plugin kind and settings, as a table
    :func:`resolve_datasets` takes again), for the run record; None for a registered one."""
    if name not in _configured:
        return None
    kind, settings = _configured[name]
    values = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings or {})
    return {"kind": kind, **{key: value for key, value in values.items() if value is not None}}


def configured_dataset(name: str, table: Mapping[str, Any]) -> Any:
    """The dataset class a run record's configuration (:func:`configuration`) describes, built
    without registering it: what the record's data is now, beside whatever this process
    calls ``name``."""
    if not isinstance(table, Mapping) or not isinstance(table.get("kind"), str):
        raise UserError(f"dataset {name}: its run record holds no usable dataset configuration")
    settings = dict(table)
    kind = settings.pop("kind")
    return _configured_class(kind, name, settings, f"the recorded configuration of dataset {name}")


def register_configured(name: str, table: Mapping[str, Any]) -> None:
    """Register ``name`` again from a table written by :func:`configuration` (a run record's)."""
    if not isinstance(table, Mapping) or not isinstance(table.get("kind"), str):
        raise UserError(f"dataset {name}: its run record holds no usable dataset configuration")
    resolve_datasets([name], {name: dict(table)})


def load_plugin(spec: str) -> None:
    """Import a local plugin given as a dotted module path or a path to a ``.py`` file."""
    # Entry points first, so a local plugin clashing with an installed one is reported.
    methods._load_entry_points()
    datasets._load_entry_points()
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UserError(f"--plugin {spec}: file not found")
        module_name = f"hashbench_plugin_{path.stem}"
        if module_name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"--plugin {spec}: not a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except UserError:
            raise
        except Exception as error:
            del sys.modules[module_name]
            raise UserError(f"--plugin {spec}: importing it failed: {type(error).__name__}: {error}") from error
        return
    if spec in sys.modules:
        return
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as error:
        raise UserError(
            f"--plugin {spec}: module not found ({error}); give a dotted module path importable "
            "from the current directory or PYTHONPATH, or a path to a .py file"
        ) from error
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"--plugin {spec}: importing it failed: {type(error).__name__}: {error}") from error


def load_plugins(specs: tuple[str, ...] | list[str]) -> None:
    if specs and "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # dotted local modules resolve from the working directory
    for spec in specs:
        load_plugin(spec)
