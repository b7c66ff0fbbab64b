"""Shared fixtures of the suites that run real nodes: a started network and signed requests.

`network` starts a bridge process and four central bank processes (PBOC/CNY, HKMA/HKD, BOT/THB,
CBUAE/AED, two commercial banks each) on free loopback ports in a temporary directory, once per
test module, and always stops them. `live` wraps that network with raw generated stubs and what
the tests need around them: the bridge called as a central bank node calls it (signed calls
with PBOC's key, `participants.central_bank.channels.bridge_channel`), bank instructions signed
with `bridge.signing.sign_as_party` and the keys in the network directory, signed queries,
admin calls on each node's operators' listener carrying the bearer token from
keys/<CB>.admin-token, and a `Snapshot` of every balance, every currency's supply and the
settlement log (sealed height, and the entry count read straight from the bridge's SQLite file,
read-only) for "a refusal changed nothing" assertions.

Nothing here skips: the nodes are this project's own processes, so a missing one is a failure.
"""

from __future__ import annotations

import itertools
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import psycopg
import pytest

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as cb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import PrivateKey
from bridge.domain import DualPvp, Envelope, Instruction, Pay
from bridge.errors import Reason
from bridge.node.caller_auth import CallerSigner
from bridge.rates import implied_rate
from bridge.signing import endorse, sign_as_party
from bridge.status import refusal_from_rpc_error
from participants.auth import sign_query
from participants.central_bank.channels import bridge_channel
from participants.launcher import Network, prepare_network
from participants.network_config import NetworkConfig
from tests.pg import PostgresServer, start_server

RPC_TIMEOUT = 20.0
VALID_FOR_MS = 120_000
READY_TIMEOUT = 60.0
R = TypeVar("R")

# Every refusal code DESIGN.md allows a node to answer a request with.
DESIGN_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

_RUN = secrets.token_hex(3)
_ids = itertools.count(1)


def now_ms() -> int:
    """Wall-clock Unix milliseconds: the bridge's logical clock follows it."""
    return time.time_ns() // 1_000_000


def new_id(prefix: str = "tx") -> str:
    """A fresh instruction id, unique across test runs and processes."""
    return f"{prefix}-{_RUN}-{next(_ids)}"


def cross_border_dual_pvp(
    cny: int = 30_000, hkd: int = 32_550, reference: str = "LC-CQ-2025-118"
) -> DualPvp:
    """A fresh dual-signed PvP between ICBC (`cny` CNY minor units) and HSBCHK (`hkd` HKD) at
    the rate agreeing with those amounts, signed now and valid for VALID_FOR_MS (to be signed
    by both banks)."""
    return DualPvp(
        new_id("dual"),
        "ICBC",
        now_ms() + VALID_FOR_MS,
        "HSBCHK",
        "CNY",
        cny,
        "HKD",
        hkd,
        implied_rate(cny, 2, hkd, 2),
        reference,
        signed_at=now_ms(),
    )


def wait_for(predicate: Callable[[], R], *, timeout: float, what: str, every: float = 0.05) -> R:
    """Poll until `predicate` returns something truthy (and return it), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def refusal_of(call: Callable[[], object]) -> grpc.RpcError:
    """Run a call that must fail; return its error (fails the test if the call succeeds)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: grpc.RpcError = info.value
    return error


def reason_of(error: grpc.RpcError) -> Reason:
    """The reason code a refused call carries in its rich status details."""
    return refusal_from_rpc_error(error).reason


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused request must leave exactly as it was."""

    accounts: dict[tuple[str, str], tuple[int, int, bool]]
    supply: dict[str, tuple[int, int]]
    sealed_height: int
    entries: int

    def available(self, participant: str, currency: str) -> int:
        return self.accounts.get((participant, currency), (0, 0, False))[0]

    def held(self, participant: str, currency: str) -> int:
        return self.accounts.get((participant, currency), (0, 0, False))[1]


class LiveNetwork:
    """A started network with stubs and signing helpers; channels are opened lazily."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self._channels: dict[str, grpc.Channel] = {}
        self._keys: dict[str, PrivateKey] = {}

    @property
    def config(self) -> NetworkConfig:
        return self.network.config

    @property
    def directory(self) -> Path:
        return self.network.directory

    # ------------------------------------------------------------------ who is who

    @property
    def central_bank_ids(self) -> list[str]:
        return [cb.id for cb in self.config.central_banks]

    @property
    def banks(self) -> list[str]:
        return [bank.id for cb in self.config.central_banks for bank in cb.banks]

    @property
    def participants(self) -> list[str]:
        return [*self.central_bank_ids, *self.banks]

    @property
    def currencies(self) -> list[str]:
        return [cb.currency for cb in self.config.central_banks]

    def home_of(self, participant: str) -> str:
        if participant in self.central_bank_ids:
            return participant
        return self.config.home_of(participant).id

    def currency_of(self, participant: str) -> str:
        return self.config.central_bank(self.home_of(participant)).currency

    def key(self, participant: str) -> PrivateKey:
        if participant not in self._keys:
            self._keys[participant] = self.config.load_key(participant)
        return self._keys[participant]

    def add_key(self, participant: str, key: PrivateKey) -> None:
        """Sign as `participant` with a key kept by the test (e.g. a bank admitted in a test)."""
        self._keys[participant] = key

    def admin_token(self, central_bank: str) -> str:
        return (self.directory / "keys" / f"{central_bank}.admin-token").read_text().strip()

    def admin_metadata(self, central_bank: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_token(central_bank)}"),)

    def signed_call(
        self, caller: str, callee: str, method: str, *, signer: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        """The signed-call headers `caller`'s node sends to call `method` (full name) on
        `callee` ("bridge" or a central bank's node), signed with `signer`'s key (default:
        the caller's own)."""
        return CallerSigner(
            chain_id=self.config.chain_id,
            caller=caller,
            audience=callee,
            signer=self.key(signer or caller),
        ).headers(method)

    # ------------------------------------------------------------------ stubs

    def channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address)
        return self._channels[address]

    def address(self, node: str) -> str:
        """The address of "bridge" or of a central bank's node."""
        if node == "bridge":
            return self.config.bridge_address
        return self.config.central_bank(node).address

    def admin_address(self, central_bank: str) -> str:
        """The address of a central bank node's admin listener (its operators' port)."""
        return self.config.central_bank(central_bank).admin_address

    @property
    def bridge(self) -> bridge_grpc.BridgeLedgerStub:
        """The bridge, called as PBOC's node calls it (signed calls with PBOC's key)."""
        if "bridge" not in self._channels:
            self._channels["bridge"] = bridge_channel(self.config, self.central_bank_ids[0])
        return bridge_grpc.BridgeLedgerStub(self._channels["bridge"])

    def node(self, central_bank: str) -> cb_grpc.CentralBankStub:
        """The bank-facing service of a central bank's node."""
        return cb_grpc.CentralBankStub(self.channel(self.address(central_bank)))

    def admin(self, central_bank: str) -> cb_grpc.CentralBankAdminStub:
        return cb_grpc.CentralBankAdminStub(self.channel(self.admin_address(central_bank)))

    def reset_channels(self) -> None:
        """Drop cached channels (after a node restarts, a fresh channel reconnects at once)."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def close(self) -> None:
        self.reset_channels()

    # ------------------------------------------------------------------ signing

    def signed(self, body: Instruction, *, signer: str | None = None) -> types.SignedInstruction:
        """The body signed by its sender (or by `signer`'s key, under the sender's name)."""
        envelope = sign_as_party(Envelope.of(body), body.sender, self.key(signer or body.sender))
        return wire.envelope_to_proto(envelope)

    def dual_signed(self, body: Instruction) -> types.SignedInstruction:
        """Every party's own signature, no endorsement: what a bank hands its node."""
        envelope = Envelope.of(body)
        for party in body.parties():
            envelope = sign_as_party(envelope, party, self.key(party))
        return wire.envelope_to_proto(envelope)

    def endorsed(self, body: Instruction) -> types.SignedInstruction:
        """What the bridge itself accepts: each party's signature and its home's endorsement."""
        envelope = Envelope.of(body)
        for party in body.parties():
            envelope = sign_as_party(envelope, party, self.key(party))
        for party in body.parties():
            home = self.home_of(party)
            envelope = endorse(envelope, party, home, self.key(home))
        return wire.envelope_to_proto(envelope)

    def query(self, method: str, request: R, requester: str, *, signer: str | None = None) -> R:
        """Fill `request.auth` for `requester`, signed with `signer`'s key (default: its own)."""
        return sign_query(
            f"/bridge.v1.CentralBank/{method}",
            request,
            requester,
            self.key(signer or requester),
            now_ms(),
        )

    # ------------------------------------------------------------------ common operations

    def issue(self, bank: str, amount: int) -> types.InstructionStatus:
        """Have the bank's home central bank issue its currency to it (admin Issue)."""
        home = self.home_of(bank)
        request = cb_pb.IssueRequest(
            instruction_id=new_id("issue"),
            valid_until=now_ms() + VALID_FOR_MS,
            body=types.Issue(to=bank, currency=self.currency_of(bank), amount=amount),
        )
        status: types.InstructionStatus = self.admin(home).Issue(
            request, metadata=self.admin_metadata(home), timeout=RPC_TIMEOUT
        )
        return status

    def pay(
        self,
        payer: str,
        payee: str,
        amount: int,
        *,
        currency: str | None = None,
        reference: str = "",
        instruction_id: str | None = None,
    ) -> types.InstructionStatus:
        """A payment signed by `payer`, sent through its home central bank's node."""
        body = Pay(
            instruction_id or new_id("pay"),
            payer,
            now_ms() + VALID_FOR_MS,
            payee,
            currency or self.currency_of(payer),
            amount,
            reference,
            signed_at=now_ms(),
        )
        status: types.InstructionStatus = self.node(self.home_of(payer)).Pay(
            self.signed(body), timeout=RPC_TIMEOUT
        )
        return status

    def finality(self, height: int = 0) -> bridge_pb.GetFinalityResponse:
        response: bridge_pb.GetFinalityResponse = self.bridge.GetFinality(
            bridge_pb.GetFinalityRequest(height=height), timeout=RPC_TIMEOUT
        )
        return response

    def wait_all_final(self, timeout: float = 30.0) -> int:
        """Wait until every sealed block is final; return the height."""

        def caught_up() -> int:
            response = self.finality()
            done = response.sealed_height and response.final_height == response.sealed_height
            return response.sealed_height if done else 0

        return wait_for(caught_up, timeout=timeout, what="every sealed block to be final")

    def wait_attested_by_all(self, height: int, timeout: float = 30.0) -> None:
        """Wait until every central bank has attested `height` (a quorum of 3 of 4 makes it
        final before the fourth attestation may have arrived)."""
        wanted = set(self.central_bank_ids)
        wait_for(
            lambda: {a.central_bank for a in self.finality(height).attestations} == wanted,
            timeout=timeout,
            what=f"every central bank to attest height {height}",
        )

    def balance(self, participant: str, currency: str) -> tuple[int, int]:
        """(available, held) of one account, as the bridge has committed it."""
        accounts = self.bridge.GetBalances(
            bridge_pb.GetBalancesRequest(participant=participant), timeout=RPC_TIMEOUT
        ).accounts
        for account in accounts:
            if account.currency == currency:
                return account.available, account.held
        return 0, 0

    def _count_rows(self, where: str = "", args: tuple[str, ...] = ()) -> int:
        """Rows of the bridge's entries table, read from PostgreSQL straight."""
        with psycopg.connect(self.config.bridge_store) as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM entries {where}".encode(), args).fetchone()
        assert row is not None
        return int(row[0])

    def entry_count(self) -> int:
        """Rows in the bridge's entries table, read from its SQLite file without writing (or
        from its PostgreSQL database)."""
        if self.config.bridge_store:
            return self._count_rows()
        uri = f"file:{self.config.bridge_db}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=10.0) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
        db.close()
        return int(count)

    def entries_of_instruction(self, sender: str, instruction_id: str) -> int:
        """How many log entries one instruction id has (the log must never hold two)."""
        if self.config.bridge_store:
            return self._count_rows(
                "WHERE sender=%s AND instruction_id=%s", (sender, instruction_id)
            )
        uri = f"file:{self.config.bridge_db}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=10.0) as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM entries WHERE sender=? AND instruction_id=?",
                (sender, instruction_id),
            ).fetchone()
        db.close()
        return int(count)

    def snapshot(self) -> Snapshot:
        """Every account and supply on the bridge, the sealed height and the entry count."""
        accounts: dict[tuple[str, str], tuple[int, int, bool]] = {}
        participants = self.bridge.ListParticipants(
            bridge_pb.ListParticipantsRequest(), timeout=RPC_TIMEOUT
        ).participants
        for participant in participants:
            for account in self.bridge.GetBalances(
                bridge_pb.GetBalancesRequest(participant=participant.id), timeout=RPC_TIMEOUT
            ).accounts:
                accounts[(account.participant, account.currency)] = (
                    account.available,
                    account.held,
                    account.frozen,
                )
        supply = {}
        for currency in self.currencies:
            reply = self.bridge.GetCurrencySupply(
                types.CurrencySupplyRequest(currency=currency), timeout=RPC_TIMEOUT
            )
            supply[currency] = (reply.issued, reply.redeemed)
        return Snapshot(accounts, supply, self.finality().sealed_height, self.entry_count())

    def assert_conserved(self, snapshot: Snapshot | None = None) -> None:
        """Per currency: outstanding supply == the sum of every available and held balance."""
        state = snapshot or self.snapshot()
        for currency, (issued, redeemed) in state.supply.items():
            total = sum(a + h for (_, c), (a, h, _) in state.accounts.items() if c == currency)
            assert total == issued - redeemed, f"{currency}: {total} != {issued} - {redeemed}"
            assert all(a >= 0 and h >= 0 for a, h, _ in state.accounts.values())

    def assert_refused_unchanged(
        self,
        call: Callable[[], object],
        code: grpc.StatusCode,
        reason: Reason | None = None,
    ) -> grpc.RpcError:
        """The call is refused with `code` (and `reason`) and balances and log are unchanged."""
        before = self.snapshot()
        error = refusal_of(call)
        assert error.code() == code, f"expected {code.name}, got {error.code().name}: " + str(
            error.details()
        )
        if reason is not None:
            assert reason_of(error) is reason, error.details()
        assert self.snapshot() == before
        return error


def start_network(
    directory: Path, *, bridge_store: str = "", bridges: int = 1, metrics: bool = False
) -> Network:
    """Prepare and start a network in `directory`; wait until every bank is admitted.

    With a postgresql:// `bridge_store`, `bridges` bridge processes share that database; with
    `metrics`, every node serves Prometheus metrics (`metrics_port`)."""
    network = prepare_network(
        directory, bridge_store=bridge_store, bridges=bridges, metrics=metrics
    ).start()
    try:
        expected = {bank.id for cb in network.config.central_banks for bank in cb.banks}
        config = network.config
        with bridge_channel(config, config.central_banks[0].id) as channel:
            stub = bridge_grpc.BridgeLedgerStub(channel)

            def admitted() -> bool:
                listed = stub.ListParticipants(bridge_pb.ListParticipantsRequest(), timeout=5.0)
                return expected <= {p.id for p in listed.participants}

            wait_for(admitted, timeout=READY_TIMEOUT, what="every bank to be admitted")
    except BaseException:
        network.stop()
        raise
    return network


def network_on_each_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, *, bridges: int = 1
) -> Iterator[Network]:
    """For a fixture parametrized ["sqlite", "postgresql"]: the network with its bridge on a
    SQLite file, or with `bridges` bridge processes on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        started = start_network(tmp_path_factory.mktemp("network"))
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        started = start_network(
            tmp_path_factory.mktemp("network-pg"),
            bridge_store=server.create_database(),
            bridges=bridges,
        )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A running network (bridge + PBOC, HKMA, BOT, CBUAE nodes), stopped after the module."""
    network = start_network(tmp_path_factory.mktemp("network"))
    try:
        yield network
    finally:
        network.stop()


@pytest.fixture(scope="module")
def live(network: Network) -> Iterator[LiveNetwork]:
    """The module's network with stubs, signing helpers and state snapshots."""
    harness = LiveNetwork(network)
    try:
        yield harness
    finally:
        harness.close()


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the session (skips, or fails under CI=true,
    when the binaries are missing)."""
    server = start_server()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's ledger lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
