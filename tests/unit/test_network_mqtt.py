"""A generated network's MQTT side: credentials for everyone, and `up`/`demo` saying whether a
broker runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from participants import network_cli
from participants.launcher import prepare_network
from participants.network_config import NetworkConfig
from tests import mqtt_support


def test_generated_network_has_mqtt_credentials_for_every_participant(tmp_path: Path) -> None:
    """Every central bank, bank and the bridge get a password; the broker's files list them all,
    hashed, and the ACL names each."""
    network = prepare_network(tmp_path / "net", central_banks=2, mqtt=False)
    config = NetworkConfig.load(network.directory)
    users = ["bridge"] + [
        p for cb in config.central_banks for p in (cb.id, *(b.id for b in cb.banks))
    ]
    passwd = (config.mqtt_directory / "passwd").read_text()
    acl = (config.mqtt_directory / "acl").read_text()
    for user in users:
        password = config.mqtt_password_path(user).read_text().strip()
        assert len(password) >= 24
        assert config.mqtt_password_path(user).stat().st_mode & 0o077 == 0
        assert f"{user}:$7$" in passwd
        assert password not in passwd
        assert f"user {user}\n" in acl
    assert config.mqtt_port == 0
    assert config.mqtt_settings("ICBC") is None


def test_network_without_a_broker_says_so(tmp_path: Path) -> None:
    """`up` and `demo` print plainly that the network runs without MQTT notifications."""
    network = prepare_network(tmp_path / "net", central_banks=1, mqtt=False)
    with network_cli.console.capture() as captured:
        network_cli.show_network(network)
    printed = " ".join(captured.get().split())
    assert "no MQTT broker: mosquitto is not installed" in printed
    assert "runs without settlement notifications over MQTT" in printed


def test_reused_network_keeps_its_passwords(tmp_path: Path) -> None:
    """Preparing an existing network again keeps each participant's MQTT password."""
    first = prepare_network(tmp_path / "net", central_banks=1, mqtt=False)
    before = first.config.mqtt_password_path("ICBC").read_text()
    again = prepare_network(tmp_path / "net", central_banks=1, mqtt=False)
    assert again.config.mqtt_password_path("ICBC").read_text() == before


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_broker_fails_under_ci_and_skips_otherwise(
    ci: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `mosquitto`, the MQTT tests' guard fails the test under CI=true (a missing
    service must not pass silently in CI) and skips it elsewhere, naming what to install."""
    monkeypatch.setattr(mqtt_support, "mosquitto_binary", lambda: None)
    monkeypatch.setenv("CI", ci)
    # both caught here, so that a skip where a failure is due fails this test
    outcomes = (pytest.fail.Exception, pytest.skip.Exception)
    with pytest.raises(outcomes, match="apt-get install mosquitto mosquitto-clients") as raised:
        mqtt_support.require_mosquitto()
    assert raised.type is (pytest.fail.Exception if ci == "true" else pytest.skip.Exception)
