"""Keeping what a method does to its process inside its own cell.

A method's code runs in the runner's process (in process, or in a worker of ``--jobs``),
where every later cell runs too. Two process-wide effects would reach them:

* ``os._exit(N)`` ends the process at once: no record, no summary, the later cells never
  run, and with ``N == 0`` the grid even looks successful. While a method runs it is
  replaced by a guard that raises :class:`ExitCalled` instead, so the cell fails with that
  reason and the grid goes on.
* ``os.chdir`` would move the later cells' relative paths; the working directory is put
  back when the method returns.

Only this process is guarded: a child it forks (a DataLoader worker) ends normally.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_real_exit = os._exit


class ExitCalled(BaseException):
    """Raised in place of ending the process when a method calls ``os._exit``.

    A BaseException, like SystemExit, so that a method's ``except Exception`` lets it through.
    """

    def __init__(self, code: object) -> None:
        self.code = code
        super().__init__(
            f"the method called os._exit({code}), which would have ended the grid's process; "
            "its cell was stopped instead"
        )


def exit_now(code: int) -> None:
    """End this process at once, even while a method is guarded (for the harness itself)."""
    _real_exit(code)


@contextlib.contextmanager
def contained() -> Iterator[list[object]]:
    """Run a method's code: ``os._exit`` raises instead, the working directory is restored.

    Yields the list of the exit codes the method asked for (a method that catches
    :class:`ExitCalled` and goes on still asked: its cell must fail all the same).
    """
    owner = os.getpid()
    calls: list[object] = []

    def guard(code: int) -> None:
        if os.getpid() != owner:  # a forked child ending as it must
            _real_exit(code)
        calls.append(code)
        raise ExitCalled(code)

    try:
        directory: str | None = os.getcwd()
    except OSError:  # already deleted: nothing to go back to
        directory = None
    previous = os._exit
    os._exit = guard
    try:
        yield calls
    finally:
        os._exit = previous
        if directory is not None:
            with contextlib.suppress(OSError):  # a deleted directory stays left
                if _current_directory() != directory:
                    os.chdir(directory)


def _current_directory() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the method deleted the folder it moved into
        return None
