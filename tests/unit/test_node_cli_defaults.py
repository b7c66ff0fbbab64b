"""The node command's option defaults repeat the nodes' own constants (so `--help` stays
light); they must not drift apart."""

from __future__ import annotations

import inspect

from bridge.node.shedding import DEFAULT_MAX_IN_FLIGHT
from participants.central_bank.service import DEFAULT_MAX_STREAM_INSTRUCTIONS
from participants.node_cli import bridge_node, central_bank_node


def default_of(command: object, name: str) -> object:
    return inspect.signature(command).parameters[name].default.default  # type: ignore[arg-type]


def test_the_in_flight_bounds_default_to_the_nodes_constants() -> None:
    """`--max-in-flight` and `--max-stream-instructions` default to what the nodes use."""
    assert default_of(bridge_node, "max_in_flight") == DEFAULT_MAX_IN_FLIGHT
    assert default_of(central_bank_node, "max_in_flight") == DEFAULT_MAX_IN_FLIGHT
    assert (
        default_of(central_bank_node, "max_stream_instructions") == DEFAULT_MAX_STREAM_INSTRUCTIONS
    )
