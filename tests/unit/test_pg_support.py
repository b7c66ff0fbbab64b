"""The tests' throw-away PostgreSQL: a missing server skips a test, and fails it under CI=true."""

from __future__ import annotations

import pytest

from tests import pg


def test_missing_postgresql_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the server binaries a PostgreSQL test fails under CI=true and skips otherwise."""
    monkeypatch.setattr(pg, "binaries", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL server binaries not found"):
        pg.start_server()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL server binaries not found"):
        pg.start_server()
