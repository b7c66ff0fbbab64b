"""Give every bank of a network a bank's liquidity in its home currency before a load run.

Each central bank issues to each of its banks about 2 billion yuan's worth of its currency
(`bridge.reference_rates.liquidity`), or `amount` when given, through its own node's
admin service (the admin token in keys/<CB>.admin-token). The instruction ids are fixed, so
funding is idempotent: a repeat within one run gets the original receipts back (`duplicate`),
and a later run, whose instructions carry a later signing time and so another body, is refused
`ID_CONFLICT` for every id already used, which counts as funded; nothing more is issued.
Banks are admitted by their central bank node shortly after it starts; funding waits for that.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.errors import Reason
from bridge.reference_rates import liquidity
from bridge.status import refusal_from_rpc_error
from participants.network_config import NetworkConfig

__all__ = ["FOREVER", "FUNDING", "fund_banks"]

FUNDING = None  # default: `liquidity(currency)` per bank, sized like a bank's real liquidity
FOREVER = 4_102_444_800_000  # 2100-01-01 in ms: a fixed validity keeps the ids idempotent
ADMISSION_WAIT = 60.0
# besides "not decided" (resubmit the same id): the bank's admission is not replayed yet
_RETRY_WHILE = frozenset({Reason.UNKNOWN_PARTICIPANT})


def admin_token(config: NetworkConfig, central_bank: str) -> str:
    return (config.directory / "keys" / f"{central_bank}.admin-token").read_text().strip()


def fund_banks(network: Path | NetworkConfig, amount: int | None = FUNDING) -> int:
    """Fund every bank once (`amount`, or its currency's liquidity); returns how many
    issuances were new."""
    config = network if isinstance(network, NetworkConfig) else NetworkConfig.load(network)
    issued = 0
    for cb in config.central_banks:
        metadata = (("authorization", f"Bearer {admin_token(config, cb.id)}"),)
        funding = liquidity(cb.currency, cb.exponent) if amount is None else amount
        with grpc.insecure_channel(cb.admin_address) as channel:
            admin = pb_grpc.CentralBankAdminStub(channel)
            for bank in cb.banks:
                request = pb.IssueRequest(
                    instruction_id=f"loadtest-fund-{bank.id}",
                    valid_until=FOREVER,
                    signed_at=time.time_ns() // 1_000_000,  # retries resend this very body
                    body=types.Issue(to=bank.id, currency=cb.currency, amount=funding),
                )
                status = _issue(admin, request, metadata)
                issued += 0 if status.receipt.duplicate else 1
    return issued


def _issue(
    admin: pb_grpc.CentralBankAdminStub,
    request: pb.IssueRequest,
    metadata: tuple[tuple[str, str], ...],
) -> types.InstructionStatus:
    deadline = time.monotonic() + ADMISSION_WAIT
    while True:
        try:
            status: types.InstructionStatus = admin.Issue(request, metadata=metadata, timeout=30)
            return status
        except grpc.RpcError as error:
            refusal = refusal_from_rpc_error(error)
            if refusal.reason is Reason.ID_CONFLICT:  # an earlier run funded this bank
                return types.InstructionStatus(receipt=types.Receipt(duplicate=True))
            waiting = refusal.reason in _RETRY_WHILE or refusal.reason.retryable
            if not waiting or time.monotonic() > deadline:
                raise RuntimeError(
                    f"funding {request.body.to} failed: {refusal.reason.value}: {refusal.message}"
                ) from error
            time.sleep(0.2)
