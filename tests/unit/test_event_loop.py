"""The event loop a node process runs on: uvloop by default, asyncio's own on request, and an
unknown choice refused before anything runs."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from bridge import event_loop


async def _running_loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_a_node_runs_on_uvloop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the variable unset (or blank) the coroutine runs on a uvloop loop."""
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    assert event_loop.run(_running_loop_type()) is uvloop.Loop
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, " ")
    assert event_loop.run(_running_loop_type()) is uvloop.Loop


def test_asyncio_runs_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """CBDC_BRIDGE_EVENT_LOOP=asyncio runs the coroutine on asyncio's own loop."""
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")
    loop_type = event_loop.run(_running_loop_type())
    assert loop_type is not uvloop.Loop
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_an_unknown_loop_is_refused_and_the_coroutine_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unknown name is a ValueError naming the variable and the choices; nothing ran."""
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "trio")
    ran = []

    async def main() -> None:
        ran.append(True)

    with pytest.raises(ValueError, match=r"CBDC_BRIDGE_EVENT_LOOP='trio'.*uvloop, asyncio"):
        event_loop.run(main())
    assert ran == []


def test_a_node_failing_with_a_value_error_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only an unknown loop name becomes a one-line exit; a ValueError of the node itself
    (a corrupt network file, a bad key) propagates as it is, traceback and all."""
    from participants.node_cli import run_until_signalled

    async def failing(stop: asyncio.Event) -> None:
        raise ValueError("network.json: Expecting value")

    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    with pytest.raises(ValueError, match=r"network\.json"):
        run_until_signalled(failing)
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "trio")
    with pytest.raises(SystemExit, match="CBDC_BRIDGE_EVENT_LOOP='trio'"):
        run_until_signalled(failing)
