"""``hashbench eval``: evaluate codes produced anywhere, from .npy / .npz files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import click
import numpy as np

from hashbench.errors import UserError

ROLES = ("query_codes", "database_codes", "query_labels", "database_labels")


def _describe(role: str) -> str:
    return role.replace("_", " ")


def _load_npy(path: str, role: str) -> np.ndarray:
    file = Path(path)
    option = "--" + role.replace("_", "-")
    if not file.exists():
        raise UserError(f"{option}: file {path} does not exist")
    if file.is_dir():
        raise UserError(f"{option}: {path} is a directory, not an .npy file")
    with file.open("rb") as handle:
        magic = handle.read(6)
    if magic[:4] == b"PK\x03\x04":
        raise UserError(f"{option}: {path} is an .npz archive; pass it with --npz instead")
    if magic != b"\x93NUMPY":
        raise UserError(
            f"{option}: {path} is not an .npy file (no NumPy header); save it with numpy.save"
        )
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{option}: {path} is not a readable .npy file ({error})") from None
    return _check_array(array, f"{option} {path}")


def _check_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise UserError(f"{where}: dtype {array.dtype} is not numeric or bool")
    return array


def _load_npz(path: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.exists():
        raise UserError(f"--npz: file {path} does not exist")
    try:
        with np.load(file, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise UserError(f"--npz: {path} is a single .npy array, not an .npz archive")
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"--npz: {path} is not a readable .npz archive ({error})") from None
    unknown = sorted(set(arrays) - set(ROLES) - {"bits"})
    if unknown:
        raise UserError(
            f"--npz: {path} holds unexpected arrays {', '.join(unknown)}; expected "
            f"{', '.join(ROLES)} (and optionally bits)"
        )
    return {name: _check_array(array, f"--npz {path} [{name}]") for name, array in arrays.items()}


def _positive(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{option} must be a positive integer; got {text!r}") from None
    if value < 1:
        raise UserError(f"{option} must be a positive integer; got {text!r}")
    return value


def _ks(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",")]
    values = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise UserError(f"--ks must be comma-separated positive integers; got {text!r}")
        values.append(int(part))
    return tuple(values)


def _name_sources(message: str, sources: dict[str, str]) -> str:
    """Add the file an array came from to the first mention of its role in an error."""
    for role, source in sources.items():
        name = _describe(role)
        if name in message:
            message = message.replace(name, f"{name} ({source})", 1)
    return message


def _print_table(data: dict[str, Any], sources: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    radius = next(key for key in data if key.startswith("precision_radius"))[
        len("precision_radius") :
    ]
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    k = data["map_k"]
    rows = [
        (f"mAP@{k}", data["map"]),
        (f"mAP@{k} tie-aware", data["map_tie_aware"]),
        (f"mAP@{k} optimistic", data["map_optimistic"]),
        (f"mAP@{k} pessimistic", data["map_pessimistic"]),
        ("mAP@all", data["map_all"]),
    ]
    rows += [(f"P@{key}", value) for key, value in data["precision_at_k"].items()]
    rows += [(f"R@{key}", value) for key, value in data["recall_at_k"].items()]
    rows += [
        (f"precision within radius {radius}", data[f"precision_radius{radius}"]),
        (f"recall within radius {radius}", data[f"recall_radius{radius}"]),
    ]
    for name, value in rows:
        table.add_row(name, "-" if value is None else f"{value:.4f}")
    console = Console()
    for role, source in sources.items():
        console.print(f"{_describe(role)}: {source}", style="dim", highlight=False)
    console.print(
        f"{data['num_queries']} queries x {data['num_database']} database items, "
        f"{data['bits']} bits; ties broken by database index, tie-aware = expectation over "
        "random orders of tied items",
        highlight=False,
    )
    console.print(table)


@click.command("eval")
@click.option(
    "--query-codes",
    metavar="FILE",
    help="Query codes .npy: (n, bits) of {0,1}, {-1,+1} or bool, or packed uint8 with --bits.",
)
@click.option(
    "--database-codes", metavar="FILE", help="Database codes .npy, same format as the query codes."
)
@click.option(
    "--query-labels",
    metavar="FILE",
    help="Query labels .npy: class ids (n,) or multi-hot (n, classes >= 2); one column is "
    "refused as ambiguous.",
)
@click.option(
    "--database-labels",
    metavar="FILE",
    help="Database labels .npy, same classes as the query labels.",
)
@click.option(
    "--npz",
    metavar="FILE",
    help="An .npz holding any of query_codes, database_codes, query_labels, database_labels "
    "(and optionally bits); the options above fill in or override its arrays, e.g. labels "
    "for a run folder's codes.npz.",
)
@click.option(
    "--bits", "bits_text", metavar="B", help="Code length; required for packed uint8 codes."
)
@click.option("--topk", "topk_text", metavar="K", help="mAP cut-off (default: the whole database).")
@click.option(
    "--ks",
    "ks_text",
    default="1,10,100,1000",
    show_default=True,
    metavar="K,K,...",
    help="Cut-offs for P@k and R@k.",
)
@click.option(
    "--radius",
    "radius_text",
    default="2",
    show_default=True,
    metavar="R",
    help="Headline Hamming radius.",
)
@click.option(
    "--chunk-size", "chunk_text", metavar="Q", help="Queries evaluated at once (bounds memory)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def eval_command(
    query_codes: str | None,
    database_codes: str | None,
    query_labels: str | None,
    database_labels: str | None,
    npz: str | None,
    bits_text: str | None,
    topk_text: str | None,
    ks_text: str,
    radius_text: str,
    chunk_text: str | None,
    as_json: bool,
) -> None:
    """Evaluate Hamming ranking of database codes for query codes (mAP@k, P@k, R@k, radius
    precision/recall, tie-aware mAP). Ties are broken by database index."""
    bits = _positive(bits_text, "--bits")
    topk = _positive(topk_text, "--topk")
    chunk_size = _positive(chunk_text, "--chunk-size")
    ks = _ks(ks_text)
    if not radius_text.strip().isdigit():
        raise UserError(f"--radius must be a non-negative integer; got {radius_text!r}")
    radius = int(radius_text)

    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    if npz is not None:
        for name, array in _load_npz(npz).items():
            if name == "bits":
                if bits is None:
                    if array.size != 1 or array.dtype.kind not in "iu" or int(array) < 1:
                        raise UserError(f"--npz: {npz} [bits] must be one positive integer")
                    bits = int(array)
                continue
            arrays[name] = array
            sources[name] = f"{npz} [{name}]"
    given = dict(
        zip(ROLES, (query_codes, database_codes, query_labels, database_labels), strict=True)
    )
    for role, path in given.items():
        if path is not None:
            arrays[role] = _load_npy(path, role)
            sources[role] = path
    missing = [role for role in ROLES if role not in arrays]
    if missing:
        options = ", ".join("--" + role.replace("_", "-") for role in missing)
        raise UserError(f"missing input: give {options} (or an --npz holding {', '.join(missing)})")

    from hashbench.metrics import evaluate

    try:
        result = evaluate(
            arrays["query_codes"],
            arrays["database_codes"],
            arrays["query_labels"],
            arrays["database_labels"],
            bits=bits,
            topk=topk,
            ks=ks,
            radius=radius,
            chunk_size=chunk_size,
        )
    except UserError as error:
        raise UserError(_name_sources(str(error), sources)) from None
    data = result.to_dict()
    if as_json:
        click.echo(json.dumps(data))
    else:
        _print_table(data, {role: sources[role] for role in ROLES})
