"""Errors a user can cause, reported by the CLI as one clear line (exit status 2)."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: bad option, missing file, unknown name.

    The message must say what is wrong and how to fix it; the CLI prints it
    without a traceback.
    """


def first_line(error: BaseException) -> str:
    """The first line of an error's message (``no message`` when it has none): a one-line
    reason for a failure that happened in code we do not own (a plugin, a worker, submitit)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"
