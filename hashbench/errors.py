"""Errors a user can cause, reported by the CLI as one clear line (exit status 2)."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: bad option, missing file, unknown name.

    The message must say what is wrong and how to fix it; the CLI prints it
    without a traceback.
    """
