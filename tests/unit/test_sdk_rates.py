"""The bank SDK's dual-signed PvP offers state the rate from the submitter's side."""

from __future__ import annotations

import pytest

from bridge.crypto import PrivateKey
from bridge.errors import Reason
from participants.sdk import BridgeRpcError
from participants.sdk._requests import BankRequests

NOW = 1_750_000_000_000


def signer() -> BankRequests:
    return BankRequests("KBANK", PrivateKey.generate(), clock=lambda: NOW)


@pytest.mark.parametrize(
    ("quoted", "stated"),
    [("0.2", "5"), ("0.8", "1.25"), ("0.92", "1.086956521739130435"), ("4", "0.25")],
)
def test_offer_states_the_inverse_of_the_signers_rate(quoted: str, stated: str) -> None:
    """KBANK quotes CNY per THB from its side; the body, sent by BOCQ, says THB per CNY."""
    offer = signer().sign_dual_pvp(
        "BOCQ", ("THB", 1_000_000_000), ("CNY", 200_000_000), quoted, "", None, None
    )
    body = offer.body
    assert (body.sender, body.counterparty) == ("BOCQ", "KBANK")
    assert (body.pay_currency, body.pay_amount) == ("CNY", 200_000_000)
    assert (body.receive_currency, body.receive_amount) == ("THB", 1_000_000_000)
    assert body.rate == stated


@pytest.mark.parametrize(
    "quoted", ["-0.2", "0", "1e3", "0.0000000000000000001", "0.000000000000000001"]
)
def test_offer_with_a_malformed_rate_is_refused_before_signing(quoted: str) -> None:
    """A rate (or inverse) that is no positive decimal of 18 places is refused MALFORMED."""
    with pytest.raises(BridgeRpcError) as caught:
        signer().sign_dual_pvp("BOCQ", ("THB", 100), ("CNY", 20), quoted, "", None, None)
    assert caught.value.reason is Reason.MALFORMED
