"""The PUBLISH packets the MQTT publisher packs itself are the bytes paho packs for the same
message (QoS 1, retained, MQTT 3.1.1), whatever the length of the remaining-length field."""

from __future__ import annotations

from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest

from bridge.node import publisher as publisher_module
from bridge.notify import settlement_topic


class Socket:
    """Stands for a connected socket: paho only checks that there is one (and closes it)."""

    def close(self) -> None:
        pass


def paho_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """What paho's own `publish` queues for the message."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client._sock = Socket()  # type: ignore[assignment]
    queued: list[bytes] = []

    def capture(command: int, packet: bytes, *_: Any, **__: Any) -> Any:
        queued.append(bytes(packet))
        return paho.MQTT_ERR_SUCCESS

    client._packet_queue = capture  # type: ignore[method-assign,assignment]
    client._send_publish(mid, topic.encode(), payload, 1, True, False, None, None)
    return queued[0]


@pytest.mark.parametrize("size", [0, 1, 80, 127 - 45, 128, 300, 16_383, 16_384, 70_000])
def test_packed_publish_is_what_paho_packs(size: int) -> None:
    """Every remaining-length width (1-3 bytes) around its boundaries: identical packets,
    queued once each with their message id awaiting a PUBACK."""
    topic = settlement_topic("PBOC", "ICBC")
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client._sock = Socket()  # type: ignore[assignment]
    awaiting: dict[int, Any] = {}
    acks: Any = object()
    publisher_module._queue_publishes(
        client, [(topic, payload), (topic, b"{}")], acks, awaiting, {}
    )
    first, second = client._out_packet
    assert first["packet"] == paho_packet(topic, payload, first["mid"])
    assert second["packet"] == paho_packet(topic, b"{}", second["mid"])
    assert first["to_process"] == len(first["packet"])
    assert awaiting == {first["mid"]: acks, second["mid"]: acks}


def test_a_wildcard_topic_is_refused_as_paho_refuses_it() -> None:
    """A topic with an MQTT wildcard is not packed (paho raises ValueError for it too)."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client._sock = Socket()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="not a topic"):
        publisher_module._queue_publishes(client, [("a/+/b", b"{}")], object(), {}, {})  # type: ignore[arg-type]
    assert not client._out_packet


def test_no_connection_is_an_mqtt_error() -> None:
    """Without a socket the publisher gets the MQTT error that ends its connection."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    with pytest.raises(aiomqtt.MqttCodeError):
        publisher_module._queue_publishes(client, [("a/b", b"{}")], object(), {}, {})  # type: ignore[arg-type]
