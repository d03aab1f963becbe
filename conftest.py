"""Suite-wide checks: a full run (``make test``) must collect the package's doctests.

``--doctest-modules`` over ``sftlab/`` runs every module's worked docstring examples. A run
started without paths (from ``testpaths``) that collects no doctest means the option or the
path was lost, and the examples silently stopped being checked: that fails the run.
"""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(session, config, items):
    from _pytest.doctest import DoctestItem

    full_run = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.keyword \
        and not config.option.markexpr
    if full_run and not any(isinstance(item, DoctestItem) for item in items):
        raise pytest.UsageError("no doctest was collected from sftlab/: the full suite runs every module's "
                                "docstring examples (--doctest-modules over the package)")
