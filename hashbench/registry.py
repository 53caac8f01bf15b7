"""Registry of method and dataset plugins.

Built-ins register exactly as third-party packages do, through the entry-point groups
``hashbench.methods`` and ``hashbench.datasets``. A local module can be imported with
``--plugin module.path`` (or a ``.py`` file); it registers its classes with the
:func:`register_method` / :func:`register_dataset` decorators.

Configured datasets. A dataset plugin that takes settings (``features``: any embedding
file) is named in a grid as ``KIND:ARGUMENT`` (``features:emb.npz``) or by the name of a
``[datasets.NAME]`` table of the experiment file; :func:`resolve_datasets` turns such
entries into dataset classes named by a name that is safe in file names (the file's stem,
or the table's name), held by the grid (:class:`GridDatasets`), never registered. The plugin declares ``argument_setting`` (what ARGUMENT
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
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from hashbench.errors import UserError, first_line

METHOD_GROUP = "hashbench.methods"
DATASET_GROUP = "hashbench.datasets"


@dataclass
class _Entry:
    obj: Any
    origin: str  # where the plugin came from, for error messages


def _point_origin(point: EntryPoint) -> str:
    origin = f"entry point {point.value!r}"
    if point.dist is not None:
        origin += f" of package {point.dist.name}"
    return origin


@dataclass
class Registry:
    """Name → plugin class, for one kind of plugin (methods or datasets).

    Installed plugins (entry points) are found by name without being imported; each is
    imported when its name is first asked for (``get``), or when all are listed (``names``).
    One that cannot be imported, or that is not a method (a dataset) class, is set aside
    with a one-line warning naming its package and error; the others keep working, and
    asking for it by name is a :class:`UserError` saying why it is unusable.
    """

    kind: str  # "method" or "dataset"
    group: str
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _pending: dict[str, EntryPoint] = field(default_factory=dict)  # found, not imported yet
    _broken: dict[str, str] = field(default_factory=dict)  # name → why it cannot be used
    _discovered: bool = False

    def add(self, name: str, obj: Any, origin: str) -> None:
        check_file_name(self.kind, name, origin)
        check_plugin_class(self.kind, obj, origin)
        self._discover()
        point = self._pending.get(name)
        if point is not None and point.value != f"{obj.__module__}:{obj.__qualname__}":
            raise UserError(
                f"two plugins claim the {self.kind} name {name!r}: {_point_origin(point)} and {origin}; "
                "rename one of them or uninstall one package"
            )
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not obj:
            raise UserError(
                f"two plugins claim the {self.kind} name {name!r}: {existing.origin} and {origin}; "
                "rename one of them or uninstall one package"
            )
        self._pending.pop(name, None)
        self._entries[name] = _Entry(obj, origin)

    def _discover(self) -> None:
        """Find the installed plugins' names (their packages' metadata; nothing is imported)."""
        if self._discovered:
            return
        self._discovered = True
        for point in entry_points(group=self.group):
            if point.name in self._entries:
                continue
            other = self._pending.get(point.name)
            if other is not None and other.value != point.value:
                self._broken[point.name] = (
                    f"two installed plugins claim the {self.kind} name {point.name!r}: {_point_origin(other)} "
                    f"and {_point_origin(point)}; uninstall one package"
                )
                continue
            self._pending[point.name] = point

    def _load(self, name: str) -> None:
        """Import the pending plugin ``name``; a broken one is set aside with a warning."""
        point = self._pending.pop(name, None)
        if point is None or name in self._broken:
            return
        origin = _point_origin(point)
        try:
            obj = point.load()
            self.add(name, obj, origin)
        except Exception as error:  # a broken third-party plugin must not hide the others
            reason = first_line(error) if isinstance(error, UserError) else f"{type(error).__name__}: {first_line(error)}"
            self._broken[name] = f"{self.kind} plugin {name!r} ({origin}) cannot be loaded: {reason}"
            print(f"warning: {self._broken[name]}; the other plugins work", file=sys.stderr)

    def _load_entry_points(self) -> None:
        """Import every installed plugin not imported yet."""
        self._discover()
        for name in sorted(self._pending):
            self._load(name)

    def names(self) -> list[str]:
        """Every usable plugin's name (each installed one imported, broken ones left out)."""
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, name: str) -> Any:
        self._discover()
        if name in self._pending:
            self._load(name)
        entry = self._entries.get(name)
        if entry is None:
            if name in self._broken:
                raise UserError(f"{self._broken[name]}; fix or uninstall that package")
            known = self.names()
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

    def knows(self, name: str) -> bool:
        """Whether a plugin is registered or installed under ``name`` (nothing is imported)."""
        self._discover()
        return name in self._entries or name in self._pending


def check_plugin_class(kind: str, obj: Any, origin: str) -> None:
    """Refuse a registered object that is not a method (or dataset) class."""
    if kind == "method":
        from hashbench.method import HashingMethod as base
    elif kind == "dataset":
        from hashbench.data import HashingDataset as base
    else:
        return
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise UserError(
            f"{origin}: registered as a {kind}, but {obj!r} is not a subclass of "
            f"hashbench.{base.__module__.rpartition('.')[2]}.{base.__name__}"
        )
    if kind == "dataset" and not _takes_keywords(obj.load, ("cache_dir", "drop_bad_rows")):
        raise UserError(
            f"{origin}: {obj.__name__}.load must take the keyword options cache_dir and drop_bad_rows "
            "(def load(self, root, *, cache_dir=None, drop_bad_rows=False), or **options)"
        )


def _takes_keywords(function: Any, names: Sequence[str]) -> bool:
    import inspect

    parameters = inspect.signature(function).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return True
    keywords = {p.name for p in parameters if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return set(names) <= keywords


def close_names(name: str, known: Sequence[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The names of ``known`` closest to ``name``, compared without regard to case (``ITQ``
    suggests ``itq``); a name equal but for its case comes first."""
    lowered: dict[str, list[str]] = {}
    for candidate in known:
        lowered.setdefault(candidate.lower(), []).append(candidate)
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=cutoff)
    return [candidate for match in close for candidate in lowered[match]][:n]


# A run folder is named METHOD-DATASET-PROTOCOL-split<S>-<B>b-seed<N>-<digest> and must fit
# the 255 bytes of a file name. Beside the three names it holds 26 bytes ("-", "-",
# "-split", "-", "b-seed", "-" and a 10-character digest), up to 19 digits for each of the
# two seeds (below 2**63) and the code length's digits (at most 9 left for them): the three
# names share the remaining 182 bytes as below. (Names are ASCII: a character is a byte.)
FILE_NAME_BYTES = 255
NAME_LIMITS = {"method": 64, "dataset": 64, "protocol": 48}
RUN_KEY_FIXED_BYTES = 26 + 19 + 19 + 9


def check_file_name(kind: str, name: Any, origin: str) -> None:
    """Refuse a plugin's name (a method's, a dataset's, a protocol's) that cannot name a file:
    it becomes part of run folders and split manifests, so its characters and its length are
    limited (:data:`NAME_LIMITS`)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise UserError(
            f"{origin}: {kind} name {name!r} cannot be used: it names files, so use letters, digits, "
            "'.', '_' and '-', starting with a letter or digit (e.g. my-method.v2)"
        )
    check_name_length(kind, name, origin)


def check_name_length(kind: str, name: str, origin: str) -> None:
    """Refuse a name longer than its kind's share of a run folder's name."""
    limit = NAME_LIMITS.get(kind)
    if limit is not None and len(name) > limit:
        shown = name if len(name) <= 40 else f"{name[:24]}…{name[-8:]}"
        raise UserError(
            f"{origin}: {kind} name {shown!r} is {len(name)} characters, and a {kind} name may have at most {limit}: "
            f"it is part of run folder names, which hold at most {FILE_NAME_BYTES} bytes; give it a shorter name"
        )


assert sum(NAME_LIMITS.values()) + RUN_KEY_FIXED_BYTES <= FILE_NAME_BYTES


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
    if ":" in name and not datasets.knows(name):
        grid = resolve_datasets([name])
        return grid.get(grid.names[0])
    return datasets.get(name)


@dataclass
class GridDatasets:
    """The datasets of one grid by name: registered ones, and those the grid configures
    (``features:PATH``, ``[datasets.NAME]`` tables). A configured dataset belongs to its grid,
    not to the registry: two grids in one process (a run, the records `reeval` reads) may
    give one name to different files."""

    names: list[str]
    configured: dict[str, Any] = field(default_factory=dict)  # name → its configured class

    def get(self, name: str) -> Any:
        return self.configured[name] if name in self.configured else datasets.get(name)

    def origin(self, name: str) -> str:
        return self.configured[name].configured_where if name in self.configured else datasets.origin(name)


DEFAULT_KIND = "features"  # the plugin of a [datasets.NAME] table without `kind`
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _configured_class(kind: str, name: str, settings: Mapping[str, Any], where: str) -> Any:
    """The dataset class of plugin ``kind`` configured with ``settings``, to be named ``name``."""
    plugin = datasets.get(kind)
    if not callable(getattr(plugin, "configured", None)):
        raise UserError(f"{where}: dataset {kind} takes no settings; drop them, or name a plugin that does (features)")
    if not _SAFE_NAME.fullmatch(name):
        raise UserError(f"{where}: dataset name {name!r}: use letters, digits, '.', '_' and '-' (it names files)")
    check_name_length("dataset", name, where)
    if datasets.knows(name):
        raise UserError(
            f"{where}: the dataset name {name!r} belongs to {datasets.origin(name)}; give this one another "
            f"name with a [datasets.NAME] table"
        )
    cls = plugin.configured(name, settings, where)
    # What the run record keeps, to make the same class again in another process.
    cls.configured_kind, cls.configured_where = kind, where
    return cls


def resolve_datasets(entries: Sequence[str], tables: Mapping[str, Mapping[str, Any]] | None = None) -> GridDatasets:
    """The datasets of a grid: their names, and a class for each configured one among ``entries``.

    An entry is a registered name (``digits``), ``KIND:ARGUMENT`` (``features:emb.npz``: the
    plugin configured with ARGUMENT, named by it after the file; a ``[datasets.NAME]`` table of
    that name adds its other settings) or the name of a table (``kind`` defaults to
    ``features``). Every process that runs cells of the grid calls this with the same entries
    and tables (relative paths resolve from the working directory).
    """
    tables = dict(tables or {})
    names: list[str] = []
    configured: dict[str, tuple[Any, str]] = {}  # name → its class, and the entry that last named it
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
        elif entry in tables and (tables[entry] or not datasets.knows(entry)):
            settings = dict(tables[entry])
            kind = settings.pop("kind", DEFAULT_KIND)
            if not isinstance(kind, str):
                raise UserError(f"[datasets.{entry}]: kind must be a dataset plugin name, got {kind!r}")
            name, where = entry, f"[datasets.{entry}]"
        else:
            names.append(entry)  # a registered name (checked by the runner)
            continue
        cls = _configured_class(kind, name, settings, where)
        if name in configured:
            first, named_by = configured[name]
            if (first.configured_kind, first.settings) != (kind, cls.settings):
                raise UserError(
                    f"two datasets of the grid are named {name!r} ({named_by} and {entry}); "
                    "name them with [datasets.NAME] tables"
                )
            cls = first
        configured[name] = (cls, entry)
        if name not in names:
            names.append(name)
    return GridDatasets(names, {name: cls for name, (cls, _) in configured.items()})


def configuration(cls: Any) -> dict[str, Any] | None:
    """How a configured dataset class was made (its plugin kind and settings, as a table
    :func:`resolve_datasets` takes again), for the run record; None for a registered one."""
    kind = getattr(cls, "configured_kind", None)
    if kind is None:
        return None
    settings = cls.settings
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


def load_plugin(spec: str) -> None:
    """Import a local plugin given as a dotted module path or a path to a ``.py`` file."""
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
