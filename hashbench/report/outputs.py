"""A report's output folders (plots, sensitivity): each lists in a manifest file what the last
report wrote there, so that the next one removes what it no longer writes and nothing else."""

from __future__ import annotations

from pathlib import Path

from hashbench.storage import atomic


def replace_outputs(folder: Path, manifest: str, earlier: list[Path], written: set[Path] | frozenset[Path]) -> list[Path]:
    """Delete the files of ``earlier`` (what the last report wrote into ``folder``) that are not
    in ``written``, and list ``written`` in the folder's ``manifest`` file; with nothing written,
    the manifest goes too, and the folder when that leaves it empty. Returns what was deleted."""
    folder = Path(folder)
    removed = []
    for path in earlier:
        if path not in written:
            path.unlink(missing_ok=True)
            removed.append(path)
    if written:
        atomic.write_text(folder / manifest, "".join(f"{path.name}\n" for path in sorted(written)))
    elif folder.is_dir():
        (folder / manifest).unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed
