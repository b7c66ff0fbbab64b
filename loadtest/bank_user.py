"""Locust users that act as commercial banks: real keys, every instruction signed.

A `BankUser` is given one bank of the network (its *desk*: the bank's id, key, home currency
and its central bank's node) and trades from it. A PvP needs the counterparty's signature
too, so for a propose/accept trade the same user also acts for the counterparty bank: it signs
the acceptance with that bank's key and sends it to that bank's own central bank node, exactly
as the counterparty would. A dual-signed PvP carries both banks' signatures and goes to the
proposer's central bank node, which fetches the counterparty central bank's endorsement.

Besides the per-RPC entries (type `grpc`), each trade that settles fires one derived
`settlement` entry (name `pay`, `pvp` or `pvp_dual`) whose response time is what the bank
experiences: from sending the first instruction of the trade (the payment, the proposal, the
dual-signed PvP) until holding the receipt with outcome SETTLED. A receipt is only sent once
the block holding the settlement is durably committed, so that is the settlement finality a
bank acts on. With `LOADTEST_FINALITY=final` the user then polls `GetInstructionStatus` until
the block is also attested by a quorum of central banks, and the settlement time includes
that (the polls are extra RPCs, so keep it off when measuring throughput).

Each settlement entry is counted once, even when the user resubmits after losing an answer
(the bridge is idempotent: the same id returns the original receipt), which is what lets the
cross-check compare Locust's count with the ledger's exactly.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import grpc
from locust import events
from locust.exception import StopUser

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import AcceptPvp, DualPvp, Envelope, Instruction, Pay, ProposePvp
from bridge.errors import Refused
from bridge.signing import sign_as_party
from loadtest.corridor import Desk, LoadNetwork, rate, trade_amounts, trade_reference
from loadtest.grpc_user import GrpcUser, listen
from loadtest.settings import LoadSettings, new_run_id
from participants.auth import sign_query
from participants.sdk import BridgeRpcError

__all__ = [
    "BankUser",
    "Desk",
    "LoadNetwork",
    "Submitted",
    "rate",
    "trade_amounts",
    "trade_reference",
]  # Desk, LoadNetwork and the trade helpers live in loadtest.corridor

log = logging.getLogger("loadtest")
SETTLEMENT = "settlement"
RPC_TIMEOUT = 30.0
VALID_FOR_MS = 120_000
SETTLE_WITHIN_MS = 60_000
FINALITY_POLL_S = 0.005
FINALITY_TIMEOUT_S = 30.0
SETTLED = types.OUTCOME_SETTLED
HELD = types.OUTCOME_HELD
SUBMIT_ATTEMPTS = 3  # a not-decided answer is resubmitted (same id) at most twice
RESUBMIT_PAUSE_S = 0.05  # before a resubmission, unless the node gave a pushback hint


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Submitted:
    """What one instruction came to: its outcome, or why not (`refusal`; a failed call is
    also reported to Locust as a failure by the recording channel, unless the refusal is
    expected)."""

    outcome: int = 0  # types.Outcome value when answered
    duplicate: bool = False
    resubmitted: bool = False
    refusal: Refused | None = None  # a final refusal, or not decided after every attempt

    @property
    def not_decided(self) -> bool:
        """No outcome after every attempt (unavailable, outcome unknown, shed): not a refusal."""
        return self.refusal is not None and self.refusal.reason.retryable

    @property
    def settled(self) -> bool:
        """Settled by this submission (a first answer `duplicate` is someone else's)."""
        return self.outcome == SETTLED and (not self.duplicate or self.resubmitted)


_desk_counter = itertools.count()
# Set when this process's test begins to stop: no new trade starts after that. Locust kills a
# waiting user asynchronously, so a user whose wait ends at that moment could otherwise start
# a trade and be killed with its instruction in flight: settled by the bridge, never counted.
_stopping = [False]
_instruction_numbers = itertools.count(1)  # per process; ids are '<run>.<pid>.<n>'


class BankUser(GrpcUser):
    """A bank's trading desk. Subclasses add tasks built from `pay`, `pvp` and `dual_pvp`."""

    abstract = True

    def on_start(self) -> None:
        self.settings = LoadSettings.from_environment().with_options(
            self.environment.parsed_options
        )
        self.network = LoadNetwork.load(self.settings.network)
        self.run_id = self.settings.run_id
        self.desk = self.choose_desk(self.network.desks)
        self._prefix = f"{self.run_id}.{os.getpid():x}"
        self._stubs: dict[str, pb_grpc.CentralBankStub] = {}
        if self.settings.user_rate > 0:
            # paced users that all start together would stay in step and send in bursts;
            # a random phase spreads their tasks evenly over each period
            time.sleep(random.uniform(0, 1 / self.settings.user_rate))

    def choose_desk(self, desks: tuple[Desk, ...]) -> Desk:
        """Round-robin over the banks, offset per load-generator process."""
        offset = getattr(self.environment.runner, "worker_index", 0) * 7
        return desks[(next(_desk_counter) + offset) % len(desks)]

    # ------------------------------------------------------------------ plumbing

    def stub(self, desk: Desk) -> pb_grpc.CentralBankStub:
        stub = self._stubs.get(desk.address)
        if stub is None:
            stub = self._stubs[desk.address] = pb_grpc.CentralBankStub(self.channel(desk.address))
        return stub

    def new_id(self) -> str:
        return f"{self._prefix}.{next(_instruction_numbers)}"

    def submit(self, desk: Desk, method: str, envelope: Envelope) -> Submitted:
        """Send a signed instruction to `desk`'s central bank. A final refusal is reported as
        it is; an answer that is not decided (unavailable, outcome unknown, shed, cancelled or
        timed out) is resubmitted with the same id, after the node's pushback hint if it gave
        one: the bridge answers a resubmission with the original outcome."""
        call = getattr(self.stub(desk), method)
        message = wire.envelope_to_proto(envelope)
        for attempt in range(SUBMIT_ATTEMPTS):
            try:
                status = call(message, timeout=RPC_TIMEOUT)
            except grpc.RpcError as error:
                failure = BridgeRpcError.from_rpc_error(error)
                if failure.retryable and attempt + 1 < SUBMIT_ATTEMPTS:
                    pause = failure.retry_after
                    time.sleep(RESUBMIT_PAUSE_S if pause is None else min(pause, RPC_TIMEOUT))
                    continue
                refusal = Refused(failure.reason, failure.message)
                return Submitted(refusal=refusal, resubmitted=attempt > 0)
            receipt = status.receipt
            return Submitted(receipt.outcome, receipt.duplicate, attempt > 0)
        raise AssertionError("unreachable")  # pragma: no cover

    def signed(self, body: Instruction, *desks: Desk) -> Envelope:
        envelope = Envelope.of(body)
        for desk in desks:
            envelope = sign_as_party(envelope, desk.bank, desk.key)
        return envelope

    def settled(self, name: str, started: float, desk: Desk, instruction_id: str) -> None:
        """Record one settlement as the bank saw it (and, if asked, once final)."""
        if self.settings.finality == "final" and not self.wait_final(desk, instruction_id):
            return
        self.fire(SETTLEMENT, name, (time.perf_counter() - started) * 1000.0)

    def wait_final(self, desk: Desk, instruction_id: str) -> bool:
        method = "/bridge.v1.CentralBank/GetInstructionStatus"
        deadline = time.monotonic() + FINALITY_TIMEOUT_S
        while time.monotonic() < deadline:
            query = sign_query(
                method,
                pb.InstructionStatusQuery(sender=desk.bank, instruction_id=instruction_id),
                desk.bank,
                desk.key,
                now_ms(),
            )
            try:
                if self.stub(desk).GetInstructionStatus(query, timeout=RPC_TIMEOUT).final:
                    return True
            except grpc.RpcError:
                return False
            time.sleep(FINALITY_POLL_S)
        return False

    def available(self, desk: Desk, currency: str) -> int:
        """The bank's available balance in `currency` (a signed query to its node)."""
        method = "/bridge.v1.CentralBank/GetBalances"
        query = sign_query(
            method, pb.BalancesQuery(currency=currency), desk.bank, desk.key, now_ms()
        )
        try:
            accounts = self.stub(desk).GetBalances(query, timeout=RPC_TIMEOUT).accounts
        except grpc.RpcError:
            return 0
        return sum(int(a.available) for a in accounts if a.currency == currency)

    def check_not_stopping(self) -> None:
        """Start no new trade once the test is stopping (see `_stopping`)."""
        if _stopping[0]:
            raise StopUser()

    # ------------------------------------------------------------------ what banks do

    def pay(
        self, payer: Desk, payee: Desk, currency: str, amount: int, reference: str = ""
    ) -> Submitted:
        """A payment signed by the payer, sent to the payer's central bank."""
        self.check_not_stopping()
        now = now_ms()
        body = Pay(
            self.new_id(),
            payer.bank,
            now + VALID_FOR_MS,
            payee.bank,
            currency,
            amount,
            reference,
            signed_at=now,
        )
        envelope = self.signed(body, payer)
        started = time.perf_counter()
        result = self.submit(payer, "Pay", envelope)
        if result.settled:
            self.settled("pay", started, payer, body.instruction_id)
        return result

    def pvp(
        self,
        proposer: Desk,
        counterparty: Desk,
        pay_amount: int,
        receive_amount: int,
        reference: str = "",
    ) -> Submitted:
        """Propose (signed by the proposer, to its central bank), then accept (signed by the
        counterparty, to the counterparty's central bank); both legs settle on acceptance."""
        self.check_not_stopping()
        now = now_ms()
        pvp_id = self.new_id()
        proposal = ProposePvp(
            pvp_id,
            proposer.bank,
            now + VALID_FOR_MS,
            counterparty.bank,
            proposer.currency,
            pay_amount,
            counterparty.currency,
            receive_amount,
            rate(proposer, pay_amount, counterparty, receive_amount),
            now + SETTLE_WITHIN_MS,
            reference,
            signed_at=now,
        )
        envelope = self.signed(proposal, proposer)
        started = time.perf_counter()
        proposed = self.submit(proposer, "ProposePvp", envelope)
        if proposed.outcome != HELD:
            return proposed
        accepted_at = now_ms()  # the counterparty signs once it has seen the proposal held
        acceptance = AcceptPvp(
            f"{pvp_id}.a",
            counterparty.bank,
            accepted_at + VALID_FOR_MS,
            proposer.bank,
            pvp_id,
            sha256(envelope.body_bytes).hexdigest(),
            signed_at=accepted_at,
        )
        accepted = self.submit(counterparty, "AcceptPvp", self.signed(acceptance, counterparty))
        if accepted.settled:
            self.settled("pvp", started, counterparty, acceptance.instruction_id)
        return accepted

    def dual_pvp(
        self,
        proposer: Desk,
        counterparty: Desk,
        pay_amount: int,
        receive_amount: int,
        reference: str = "",
    ) -> Submitted:
        """Both banks sign one instruction; the proposer's central bank submits it."""
        self.check_not_stopping()
        now = now_ms()
        body = DualPvp(
            self.new_id(),
            proposer.bank,
            now + VALID_FOR_MS,
            counterparty.bank,
            proposer.currency,
            pay_amount,
            counterparty.currency,
            receive_amount,
            rate(proposer, pay_amount, counterparty, receive_amount),
            reference,
            signed_at=now,
        )
        envelope = self.signed(body, proposer, counterparty)
        started = time.perf_counter()
        result = self.submit(proposer, "SubmitDualPvp", envelope)
        if result.settled:
            self.settled("pvp_dual", started, proposer, body.instruction_id)
        return result


# ---------------------------------------------------------------------------- Locust hooks


def _add_options(parser: Any) -> None:
    parser.add_argument(
        "--bridge-network",
        default="",
        include_in_web_ui=True,
        help="Network directory (network.json, keys/); default: $BRIDGE_NETWORK",
    )
    parser.add_argument(
        "--run-id",
        default="",
        include_in_web_ui=False,
        help="Prefix of every instruction id of this run; default: $LOADTEST_RUN_ID or new",
    )


_starts = itertools.count(1)


def _fund_and_name_run(environment: Any, **kwargs: Any) -> None:
    """On the master (or a local run): fund the banks, and give a restarted test its own id."""
    from locust.runners import WorkerRunner

    if isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    settings = LoadSettings.from_environment().with_options(options)
    if next(_starts) > 1 and options is not None:
        options.run_id = new_run_id()  # a web UI restart: the cross-check covers this test only
    elif options is not None and not options.run_id:
        options.run_id = settings.run_id
    from loadtest.funding import fund_banks

    new = fund_banks(settings.network)
    if new:
        log.info("funded %d banks of %s", new, settings.network)


def _cross_check(environment: Any, **kwargs: Any) -> None:
    """At the end (master or local run): compare settlements with the ledger, verify the log.

    Off when LOADTEST_CROSSCHECK=0 (the bench runner checks from the CSV report itself).
    """
    from locust.runners import WorkerRunner

    if isinstance(environment.runner, WorkerRunner) or os.environ.get(
        "LOADTEST_CROSSCHECK", "1"
    ) in ("0", "false", "no"):
        return
    from loadtest.crosscheck import crosscheck

    settings = LoadSettings.from_environment().with_options(environment.parsed_options)
    seen = sum(
        entry.num_requests
        for (name, method), entry in environment.stats.entries.items()
        if method == SETTLEMENT
    )
    result = crosscheck(settings.network, settings.run_id, seen)
    (log.info if result.ok else log.error)(result.describe())
    if not result.ok:
        environment.process_exit_code = 1


def _test_stopping(**kwargs: Any) -> None:
    _stopping[0] = True


def _test_starting(**kwargs: Any) -> None:
    _stopping[0] = False


listen(events.test_stopping, _test_stopping)
listen(events.test_start, _test_starting)
listen(events.init_command_line_parser, _add_options)
listen(events.test_start, _fund_and_name_run)
listen(events.quitting, _cross_check)
