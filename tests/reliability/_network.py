"""The test corridor with keys kept in files, so a restarted process signs as the same banks.

`tests.factories.network()` makes fresh keys per process; a crash loop needs the child it
restarts to be the same participants, so the keys live as PEM files in the run's directory.
"""

from __future__ import annotations

from pathlib import Path

from bridge.crypto import PrivateKey
from bridge.domain import Genesis, GenesisBank, ParticipantId
from tests.factories import BANKS, CENTRAL_BANKS, Network

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
    genesis = Genesis(
        chain_id="mbridge-crash-loop",
        central_banks=tuple(
            GenesisBank(cb, jurisdiction, keys[cb].public_key, currency, exponent)
            for cb, jurisdiction, currency, exponent in CENTRAL_BANKS
        ),
        quorum=3,
    )
    home = {cb: cb for cb, *_ in CENTRAL_BANKS} | dict(BANKS)
    cb_currency = {cb: currency for cb, _, currency, _ in CENTRAL_BANKS}
    cb_jurisdiction = {cb: jurisdiction for cb, jurisdiction, _, _ in CENTRAL_BANKS}
    return Network(
        keys=keys,
        genesis=genesis,
        home=home,
        currency_of={who: cb_currency[cb] for who, cb in home.items()},
        jurisdiction_of={who: cb_jurisdiction[cb] for who, cb in home.items()},
    )
