"""The commercial bank SDK: pay, trade FX by PvP and read accounts through a central bank node.

    from participants.sdk import BankClient

    with BankClient.from_network(Path("demo-network"), "ICBC") as icbc:
        icbc.wait_ready()
        result = icbc.pay("BOCQ", "CNY", 123_456, reference="INV-2025-0042")
        icbc.wait_final(result.instruction_id)

`BankClient` uses grpc's synchronous stubs (fine under gevent); `AsyncBankClient` has the same
methods for asyncio. Amounts are integers in minor units (`to_minor` / `format_minor` convert
from and to major units). Failed calls raise `BridgeRpcError` with the bridge's reason code, as
one of its two kinds: `Refusal` (final, nothing changed) or `NotDecided` (resubmit the same
instruction id; the clients retry these themselves, with backoff).
`CentralBankAdminClient` is the central bank operators' desk. `SettlementSubscriber` and
`AsyncSettlementSubscriber` follow a bank's settlements over MQTT, filling gaps from gRPC.
"""

from bridge.domain import Outcome
from bridge.errors import Reason
from participants.sdk._admin import CentralBankAdminClient
from participants.sdk._amounts import AmountError, format_minor, to_minor
from participants.sdk._async_client import AsyncBankClient
from participants.sdk._client import BankClient
from participants.sdk._connection import DEFAULT_TIMEOUT, BankSettings, RetryPolicy, Tls
from participants.sdk._errors import BridgeRpcError, NotDecided, Refusal
from participants.sdk._events import (
    AsyncSettlementSubscriber,
    SettlementEvent,
    SettlementSubscriber,
)
from participants.sdk._models import (
    Account,
    Balance,
    CurrencySupply,
    HistoryEntry,
    InstructionResult,
    Money,
    PvpInfo,
    SignedDualPvp,
)
from participants.sdk._requests import new_instruction_id

__all__ = [
    "DEFAULT_TIMEOUT",
    "Account",
    "AmountError",
    "AsyncBankClient",
    "AsyncSettlementSubscriber",
    "Balance",
    "BankClient",
    "BankSettings",
    "BridgeRpcError",
    "CentralBankAdminClient",
    "CurrencySupply",
    "HistoryEntry",
    "InstructionResult",
    "Money",
    "NotDecided",
    "Outcome",
    "PvpInfo",
    "Reason",
    "Refusal",
    "RetryPolicy",
    "SettlementEvent",
    "SettlementSubscriber",
    "SignedDualPvp",
    "Tls",
    "format_minor",
    "new_instruction_id",
    "to_minor",
]
