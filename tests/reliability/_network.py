"""The test corridor with keys kept in files, so a restarted process signs as the same banks.

`tests.factories.network()` makes fresh keys per process; a crash loop needs the child it
restarts to be the same participants, so the keys live as PEM files in the run's directory.
"""

from __future__ import annotations

from pathlib import Path

from bridge.crypto import PrivateKey
from bridge.domain import ParticipantId
from tests.factories import BANKS, CENTRAL_BANKS, Network, network_with_keys

KEY_DIRECTORY = "keys"


def participants() -> tuple[ParticipantId, ...]:
    return (*(cb for cb, *_ in CENTRAL_BANKS), *(bank for bank, _ in BANKS))


def ensure_keys(directory: Path) -> None:
    """Create a key file for every participant that has none yet."""
    for who in participants():
        path = directory / KEY_DIRECTORY / f"{who}.pem"
        if not path.exists():
            PrivateKey.generate().save(path)


def load_network(directory: Path) -> Network:
    """The corridor whose keys are the PEM files under `directory`."""
    keys = {
        who: PrivateKey.load(directory / KEY_DIRECTORY / f"{who}.pem") for who in participants()
    }
    return network_with_keys(keys, chain_id="mbridge-crash-loop")
