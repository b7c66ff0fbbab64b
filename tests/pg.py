"""The throw-away PostgreSQL server of the tests (see `loadtest.pgserver`).

Where the binaries are missing, a test skips, and fails under `CI=true` (`.ci/run` installs
them through `scripts/services.sh`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loadtest.pgserver import PostgresServer, binaries
from loadtest.pgserver import start_server as _start

__all__ = ["PostgresServer", "require_binaries", "start_server"]


def require_binaries() -> Path:
    """The bin directory, or skip (fail under CI=true) when PostgreSQL is not installed."""
    directory = binaries()
    if directory is None:
        message = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (scripts/services.sh installs them)")
        pytest.skip(message)
    return directory


def start_server() -> PostgresServer:
    """A started throw-away server (skips, or fails under CI=true, without the binaries)."""
    return _start(require_binaries())
