"""The error types every stage may raise; this module imports nothing from sftlab.

``UsageError`` is unusable input (a missing file, no records, a bad config): every command
prints it as one line and exits 2, with no traceback. The library raises it; only the CLI
catches it, so no library module imports the CLI.
"""
from __future__ import annotations


class UsageError(Exception):
    """Unusable input: printed as one line, exit code 2."""
