"""Property-based fuzzing of every node's gRPC surface with protobuf messages and raw bytes.

Requests come from hypothesis strategies built from the message descriptors
(`DESCRIPTOR.fields`: random values of every type, boundary integers, over-long and unprintable
strings, unknown enum values, nested messages, oneof members), from mutations of valid signed
requests (one field changed, a bit flipped, truncated, invalid UTF-8 spliced into a string,
an over-long varint, garbage appended), and from plain garbage. They go, as raw bytes over a
generic channel, to every RPC of `CentralBank` and `CentralBankAdmin` on every central bank
node and of `BridgeLedger` on the bridge; request streams get one to three messages.

The property, counted rather than asserted (the figures are the result):
- every call is answered (a status, or for a stream every message) within its deadline; a
  client-side deadline is a hang, except a server stream whose valid request simply waits for
  data that does not exist yet ("streams left open");
- no answer is `UNKNOWN` or `INTERNAL`;
- state (every balance, every currency's supply, the sealed height) is unchanged after every
  batch of requests that were all refused;
- every node is still alive and SERVING afterwards, and no traceback was logged.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import check_message
from bridge.domain import AcceptPvp, DualPvp, Envelope, Instruction, Pay, ProposePvp
from bridge.errors import Refused
from bridge.signing import endorse, sign_as_party
from participants.auth import sign_query
from participants.central_bank.channels import bridge_channel
from participants.network_config import NetworkConfig

__all__ = ["FuzzSettings", "Target", "describe", "fuzz_network", "run"]

UNARY_DEADLINE = 10.0
OPEN_STREAM_WAIT = 0.3  # a valid server-stream request may wait for data: this long
BAD_ANSWERS = frozenset({"UNKNOWN", "INTERNAL"})
MAX_DEPTH = 4
BIG_STRINGS = (33, 57, 65, 141, 4_096, 70_000, 1 << 20)
READ_ONLY = ("Get", "List", "Watch", "Stream", "EndorseDualPvp")  # method name prefixes
INT64 = (-(2**63), -(2**31) - 1, -2, -1, 0, 1, 2, 2**31 - 1, 2**31, 2**63 - 1)


@dataclass(frozen=True, slots=True)
class FuzzSettings:
    requests: int = 10_000
    seed: int = 0
    batch: int = 50  # requests between two state checks
    network: Path | None = None  # None: start a fresh network in a temporary directory


@dataclass(frozen=True, slots=True)
class Target:
    """One RPC of one node."""

    node: str
    address: str
    method: MethodDescriptor
    signed_as: str = ""  # the bridge: calls signed as this central bank's node ("": anonymous)

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


@dataclass(frozen=True, slots=True)
class Case:
    """What one example sends: payloads (one, or several on a request stream) to a target."""

    target: Target
    payloads: tuple[bytes, ...]
    origin: str  # generated, mutated-valid, garbage


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    in_stream: Counter[str] = field(default_factory=Counter)
    origins: Counter[str] = field(default_factory=Counter)
    hangs: int = 0
    open_streams: int = 0
    batches_checked: int = 0
    state_changes_after_refusals: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def unknown_or_internal(self) -> int:
        return sum(self.statuses[c] + self.in_stream[c] for c in BAD_ANSWERS)

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)


# ---------------------------------------------------------------------------- strategies


def _int_strategy(fd: FieldDescriptor) -> st.SearchStrategy[int]:
    if fd.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return st.sampled_from([v for v in INT64 if -(2**31) <= v < 2**31]) | st.integers(
            -(2**31), 2**31 - 1
        )
    if fd.type == FieldDescriptor.TYPE_UINT32:
        return st.integers(0, 2**32 - 1)
    return st.sampled_from(INT64) | st.integers(-(2**63), 2**63 - 1)


_REALISTIC = ["ICBC", "PBOC", "HSBCHK", "CNY", "HKD", "1.08", "pay-1", ""]
_TEXT = st.one_of(
    st.sampled_from(_REALISTIC),
    st.text(max_size=80),
    st.sampled_from(["A" * n for n in BIG_STRINGS]),
)
_BYTES = st.one_of(
    st.binary(max_size=100),
    st.sampled_from([b"\x04" * n for n in (0, 1, 31, 32, 33, 64, 65, 4_096)]),
)


@functools.cache
def value_strategy(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """A value for one (non-repeated) field of its declared type."""
    if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type is not None:
        return message_strategy(fd.message_type, depth + 1)
    if fd.type == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)  # proto3 enums are open: unknown values decode
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats()
    return _int_strategy(fd)


@functools.cache
def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`: any subset of fields set, one member of each oneof."""
    cls = GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    plain = [f for f in descriptor.fields if f.containing_oneof is None]
    oneofs = list(descriptor.oneofs)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for fd in plain:
            if not draw(st.booleans()):
                continue
            if fd.is_repeated:
                values = draw(st.lists(value_strategy(fd, depth), max_size=6))
                getattr(message, fd.name).extend(values)
            else:
                _set(message, fd, draw(value_strategy(fd, depth)))
        for oneof in oneofs:
            chosen = draw(st.none() | st.sampled_from(list(oneof.fields)))
            if chosen is not None:
                _set(message, chosen, draw(value_strategy(chosen, depth)))
        return message

    return build()


def _set(message: Message, fd: FieldDescriptor, value: Any) -> None:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, fd.name).CopyFrom(value)
    else:
        setattr(message, fd.name, value)


def _scalar_fields(message: Message) -> list[tuple[Message, FieldDescriptor]]:
    """Every set, non-repeated scalar field of `message` and its sub-messages."""
    found: list[tuple[Message, FieldDescriptor]] = []
    for fd, value in message.ListFields():
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if fd.is_repeated else [value]
            for item in items:
                found.extend(_scalar_fields(item))
        elif not fd.is_repeated:
            found.append((message, fd))
    return found


MUTATIONS = ("field", "truncate", "bit flip", "invalid UTF-8", "overlong varint", "append")


@st.composite
def mutated(draw: st.DrawFn, message: Message) -> bytes:
    """The message with one mutation, encoded (or the encoding mutated)."""
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "field":
        copy = type(message)()
        copy.CopyFrom(message)
        fields = _scalar_fields(copy)
        if fields:
            owner, fd = draw(st.sampled_from(fields))
            setattr(owner, fd.name, draw(value_strategy(fd, MAX_DEPTH)))
        return copy.SerializeToString()
    data = message.SerializeToString()
    if kind == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "bit flip" and data:
        position = draw(st.integers(0, len(data) - 1))
        flipped = bytearray(data)
        flipped[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(flipped)
    if kind == "invalid UTF-8":
        strings = [
            getattr(o, f.name).encode()
            for o, f in _scalar_fields(message)
            if f.type == FieldDescriptor.TYPE_STRING and getattr(o, f.name)
        ]
        if strings:
            chosen = draw(st.sampled_from(strings))
            return data.replace(chosen, b"\xff" * len(chosen), 1)
    if kind == "overlong varint":
        return data + b"\x08" + b"\xff" * 10 + b"\x01"
    return data + draw(st.binary(min_size=1, max_size=20))


# ---------------------------------------------------------------------------- valid requests


def valid_requests(config: NetworkConfig) -> list[tuple[str, str, Message]]:
    """Correctly signed requests, as (node, method name, message), to mutate."""
    now = time.time_ns() // 1_000_000
    until = now + 600_000
    out: list[tuple[str, str, Message]] = []
    banks = [(bank.id, cb) for cb in config.central_banks for bank in cb.banks]
    for index, (bank, cb) in enumerate(banks):
        key = config.load_key(bank)
        peer, peer_cb = banks[(index + 1) % len(banks)]
        same = next((b for b, c in banks if c.id == cb.id and b != bank), peer)
        run = f"fuzz{now % 10**8}"

        def signed(body: Instruction, signer: str = bank) -> types.SignedInstruction:
            return wire.envelope_to_proto(
                sign_as_party(Envelope.of(body), signer, config.load_key(signer))
            )

        pay = Pay(
            f"{run}-pay-{bank}", bank, until, same, cb.currency, 1, "INV-FUZZ-1", signed_at=now
        )
        propose = ProposePvp(
            f"{run}-pvp-{bank}",
            bank,
            until,
            peer,
            cb.currency,
            1,
            peer_cb.currency,
            1,
            "1",
            now + 3_600_000,
            "",
            signed_at=now,
        )
        accept = AcceptPvp(f"{run}-acc-{bank}", bank, until, peer, "nope", "0" * 64, signed_at=now)
        dual_body = DualPvp(
            f"{run}-dual-{bank}",
            bank,
            until,
            peer,
            cb.currency,
            1,
            peer_cb.currency,
            1,
            "1",
            "",
            signed_at=now,
        )
        dual = sign_as_party(Envelope.of(dual_body), bank, key)
        dual = sign_as_party(dual, peer, config.load_key(peer))
        out += [
            (cb.id, "Pay", signed(pay)),
            (cb.id, "ProposePvp", signed(propose)),
            (cb.id, "AcceptPvp", signed(accept)),
            (cb.id, "SubmitDualPvp", wire.envelope_to_proto(dual)),
            (
                cb.id,
                "SubmitStream",
                cb_pb.BankSubmitRequest(correlation_id=1, instruction=signed(pay)),
            ),
        ]
        queries: list[tuple[str, Message]] = [
            ("GetBalances", cb_pb.BalancesQuery()),
            ("GetHistory", cb_pb.HistoryQuery(from_seq=1, limit=5)),
            (
                "GetInstructionStatus",
                cb_pb.InstructionStatusQuery(instruction_id=pay.instruction_id),
            ),
            ("GetPvp", cb_pb.PvpQuery(proposer=bank, pvp_id=propose.instruction_id)),
            ("WatchSettlements", cb_pb.WatchSettlementsQuery(from_seq=1)),
            (
                "RequestIssuance",
                cb_pb.IssuanceRequest(request_id=f"{run}-{index}", valid_until=until, amount=1),
            ),
        ]
        for method, query in queries:
            out.append(
                (
                    cb.id,
                    method,
                    sign_query(f"/bridge.v1.CentralBank/{method}", query, bank, key, now),
                )
            )
        home_key = config.load_key(cb.id)
        endorsed = endorse(sign_as_party(Envelope.of(pay), bank, key), bank, cb.id, home_key)
        out.append(("bridge", "SubmitOne", wire.envelope_to_proto(endorsed)))
        out.append(
            (
                "bridge",
                "GetReceipt",
                bridge_pb.GetReceiptRequest(sender=bank, instruction_id=pay.instruction_id),
            )
        )
    return out


# ---------------------------------------------------------------------------- targets


def targets_of(config: NetworkConfig) -> list[Target]:
    """Every RPC of every listener: the bridge (called as a central bank node, and
    anonymously), each central bank's bank-facing and operators' listeners."""
    bridge_service = bridge_pb.DESCRIPTOR.services_by_name["BridgeLedger"]
    caller = config.central_banks[0].id
    found = [Target("bridge", config.bridge_address, m, caller) for m in bridge_service.methods]
    found += [Target("bridge anonymous", config.bridge_address, m) for m in bridge_service.methods]
    bank_service = cb_pb.DESCRIPTOR.services_by_name["CentralBank"]
    admin_service = cb_pb.DESCRIPTOR.services_by_name["CentralBankAdmin"]
    for cb in config.central_banks:
        found += [Target(cb.id, cb.address, m) for m in bank_service.methods]
        found += [Target(f"{cb.id} admin", cb.admin_address, m) for m in admin_service.methods]
    return found


def cases(config: NetworkConfig) -> st.SearchStrategy[Case]:
    targets = targets_of(config)
    by_name = {(t.node, t.method.name): t for t in targets}
    pool = [(by_name[(node, method)], message) for node, method, message in valid_requests(config)]

    @st.composite
    def generated(draw: st.DrawFn) -> Case:
        target = draw(st.sampled_from(targets))
        count = draw(st.integers(1, 3)) if target.method.client_streaming else 1
        messages = [draw(message_strategy(target.method.input_type)) for _ in range(count)]
        payloads = []
        for message in messages:
            raw = draw(st.booleans())
            payloads.append(draw(mutated(message)) if raw else message.SerializeToString())
        return Case(target, tuple(payloads), "generated")

    @st.composite
    def mutated_valid(draw: st.DrawFn) -> Case:
        target, message = draw(st.sampled_from(pool))
        return Case(target, (draw(mutated(message)),), "mutated valid")

    @st.composite
    def garbage(draw: st.DrawFn) -> Case:
        target = draw(st.sampled_from(targets))
        return Case(target, (draw(st.binary(max_size=200)),), "garbage")

    return st.one_of(generated(), mutated_valid(), garbage())


# ---------------------------------------------------------------------------- sending


def _well_formed(target: Target, payload: bytes) -> bool:
    """Whether the node should take the payload past its edge (decodes, fields in bounds)."""
    cls = GetMessageClass(target.method.input_type)
    try:
        check_message(cls.FromString(payload))
    except (DecodeError, Refused, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def _answered_by_server(error: grpc.RpcError) -> bool:
    """A status the server sent (with rich details), not the client giving up."""
    keys = {key for key, _ in error.trailing_metadata() or ()}
    return "grpc-status-details-bin" in keys


class Sender:
    """Sends cases as raw bytes and tallies the answers."""

    def __init__(self, tally: Tally, config: NetworkConfig) -> None:
        self.tally = tally
        self.config = config
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self.accepted_in_batch = False

    def channel(self, target: Target) -> grpc.Channel:
        key = (target.address, target.signed_as)
        if key not in self._channels:
            self._channels[key] = (
                bridge_channel(self.config, target.signed_as)
                if target.signed_as
                else grpc.insecure_channel(target.address)
            )
        return self._channels[key]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def send(self, case: Case) -> None:
        tally = self.tally
        tally.sent += 1
        tally.origins[case.origin] += 1
        method = case.target.method
        try:
            if method.client_streaming:
                self._stream(case)
            elif method.server_streaming:
                self._server_stream(case)
            else:
                call = self.channel(case.target).unary_unary(case.target.path)
                call(case.payloads[0], timeout=UNARY_DEADLINE)
                self._status(case, "OK")
        except grpc.RpcError as error:
            self._error(case, error)

    def _status(self, case: Case, code: str) -> None:
        self.tally.statuses[code] += 1
        if code == "OK" and not case.target.method.name.startswith(READ_ONLY):
            self.accepted_in_batch = True
        if code in BAD_ANSWERS:
            self.tally.note(f"{case.target.node} {case.target.path} {case.origin}: {code}")

    def _error(self, case: Case, error: grpc.RpcError) -> None:
        code = error.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and not _answered_by_server(error):
            waiting = (
                case.target.method.server_streaming and not case.target.method.client_streaming
            )
            if waiting and _well_formed(case.target, case.payloads[0]):
                self.tally.open_streams += 1
                return
            self.tally.hangs += 1
            self.tally.note(f"{case.target.node} {case.target.path} {case.origin}: no answer")
            return
        self._status(case, code.name)

    def _server_stream(self, case: Case) -> None:
        well_formed = _well_formed(case.target, case.payloads[0])
        call = self.channel(case.target).unary_stream(case.target.path)
        replies = call(
            case.payloads[0], timeout=OPEN_STREAM_WAIT if well_formed else UNARY_DEADLINE
        )
        try:
            next(iter(replies))
        except StopIteration:
            pass
        finally:
            replies.cancel()
        self._status(case, "OK")

    def _stream(self, case: Case) -> None:
        call = self.channel(case.target).stream_stream(case.target.path)
        response_class = GetMessageClass(case.target.method.output_type)
        for data in call(iter(case.payloads), timeout=UNARY_DEADLINE):
            reply: Any = response_class.FromString(data)
            # a batch's answer holds one result per instruction (SubmitStream's `results`,
            # Submit's `batch`): each counts on its own
            answers = list(getattr(reply, "results", ())) or list(getattr(reply, "batch", ()))
            for answer in answers or [reply]:
                which = answer.WhichOneof("result")
                code = answer.refusal.code if which == "refusal" else "OK"
                self.tally.in_stream[code] += 1
                if code == "OK":
                    self.accepted_in_batch = True
                if code in BAD_ANSWERS:
                    self.tally.note(f"{case.target.node} {case.target.path} in stream: {code}")
        self.tally.statuses["OK"] += 1  # the stream ended well; its answers are counted above


# ---------------------------------------------------------------------------- state and health


State = tuple[tuple[tuple[str, str, int, int, bool], ...], tuple[tuple[str, int, int], ...], int]


def state_of(config: NetworkConfig, channel: grpc.Channel) -> State:
    """Every balance, every currency's supply and the sealed height, read from the bridge."""
    stub = bridge_grpc.BridgeLedgerStub(channel)
    accounts = []
    listed = stub.ListParticipants(bridge_pb.ListParticipantsRequest(), timeout=UNARY_DEADLINE)
    for participant in listed.participants:
        reply = stub.GetBalances(
            bridge_pb.GetBalancesRequest(participant=participant.id), timeout=UNARY_DEADLINE
        )
        accounts += [
            (a.participant, a.currency, a.available, a.held, a.frozen) for a in reply.accounts
        ]
    supply = []
    for cb in config.central_banks:
        reply = stub.GetCurrencySupply(
            types.CurrencySupplyRequest(currency=cb.currency), timeout=UNARY_DEADLINE
        )
        supply.append((cb.currency, reply.issued, reply.redeemed))
    finality = stub.GetFinality(bridge_pb.GetFinalityRequest(), timeout=UNARY_DEADLINE)
    return tuple(sorted(accounts)), tuple(supply), finality.sealed_height


def nodes_not_serving(config: NetworkConfig) -> list[str]:
    addresses = {"bridge": config.bridge_address}
    for cb in config.central_banks:
        addresses |= {cb.id: cb.address, f"{cb.id} admin": cb.admin_address}
    down = []
    for node, address in addresses.items():
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=UNARY_DEADLINE
                )
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                serving = False
        if not serving:
            down.append(node)
    return down


def _log_sizes(directory: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in (directory / "logs").glob("*.log")}


def _tracebacks_since(sizes: dict[Path, int]) -> int:
    count = 0
    for path, size in sizes.items():
        with path.open("rb") as handle:
            handle.seek(size)
            count += handle.read().count(b"Traceback")
    return count


# ---------------------------------------------------------------------------- the run


def fuzz_network(
    config: NetworkConfig,
    *,
    requests: int,
    seed: int = 0,
    batch: int = 50,
    alive: Callable[[], list[str]] = lambda: [],
) -> dict[str, Any]:
    """Fuzz a running network; `alive` names nodes whose process exited or restarted."""
    if config.tls is not None:
        raise ValueError("the fuzzer talks plaintext gRPC: use a network without TLS")
    tally = Tally()
    sender = Sender(tally, config)
    logs = _log_sizes(config.directory)
    state_channel = bridge_channel(config, config.central_banks[0].id)
    baseline = [state_of(config, state_channel)]
    started = time.perf_counter()

    def check_state() -> None:
        now = state_of(config, state_channel)
        if not sender.accepted_in_batch:
            tally.batches_checked += 1
            if now != baseline[0]:
                tally.state_changes_after_refusals += 1
                tally.note(f"state changed in a batch of refusals ending at request {tally.sent}")
        baseline[0] = now
        sender.accepted_in_batch = False

    @settings(
        max_examples=requests,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(cases(config))
    def property_holds(case: Case) -> None:
        sender.send(case)
        if tally.sent % batch == 0:
            check_state()

    try:
        property_holds()
        check_state()
    finally:
        sender.close()
        state_channel.close()
    seconds = time.perf_counter() - started
    down = sorted({*nodes_not_serving(config), *alive()})
    return {
        "requests": tally.sent,
        "seconds": round(seconds, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "in_stream_answers": dict(sorted(tally.in_stream.items())),
        "origins": dict(sorted(tally.origins.items())),
        "unknown_or_internal": tally.unknown_or_internal,
        "state_changes_after_refusals": tally.state_changes_after_refusals,
        "refusal_batches_checked": tally.batches_checked,
        "hangs": tally.hangs,
        "streams_left_open": tally.open_streams,
        "nodes_down_or_restarted": down,
        "restarts_or_hangs": tally.hangs + len(down),
        "tracebacks_logged": _tracebacks_since(logs),
        "examples": tally.examples,
    }


def run(fuzz: FuzzSettings) -> dict[str, Any]:
    """Fuzz the network in `fuzz.network`, or a fresh one started (and stopped) for the run."""
    if fuzz.network is not None:
        config = NetworkConfig.load(fuzz.network)
        return fuzz_network(config, requests=fuzz.requests, seed=fuzz.seed, batch=fuzz.batch)
    from loadtest.benchkit import bench_network

    with bench_network(None, replica_check="endorsements") as network:
        nodes = {"bridge": network.bridge, **network.central_banks}
        pids = {name: node.process.pid for name, node in nodes.items() if node.process}

        def alive() -> list[str]:
            return [
                name
                for name, node in nodes.items()
                if node.process is None
                or node.process.poll() is not None
                or node.process.pid != pids.get(name)
            ]

        return fuzz_network(
            network.config, requests=fuzz.requests, seed=fuzz.seed, batch=fuzz.batch, alive=alive
        )


def describe(figures: dict[str, Any]) -> str:
    lines = [
        f"requests sent                 {figures['requests']:,} in {figures['seconds']} s",
        "answered with each status     "
        + ", ".join(f"{code} {count:,}" for code, count in figures["statuses"].items()),
        "in-stream answers             "
        + ", ".join(f"{code} {count:,}" for code, count in figures["in_stream_answers"].items()),
        f"UNKNOWN/INTERNAL              {figures['unknown_or_internal']}  (goal 0)",
        f"state changes after refusals  {figures['state_changes_after_refusals']}  (goal 0; "
        f"{figures['refusal_batches_checked']} all-refused batches checked)",
        f"node restarts or hangs        {figures['restarts_or_hangs']}  (goal 0; hangs "
        f"{figures['hangs']}, nodes down {figures['nodes_down_or_restarted'] or 'none'})",
        f"tracebacks logged             {figures['tracebacks_logged']}",
        f"server streams left open      {figures['streams_left_open']} (valid, waiting for data)",
    ]
    lines += [f"  {example}" for example in figures["examples"]]
    return "\n".join(lines)
