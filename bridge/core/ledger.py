"""The pure ledger core: signed instructions in, receipts and log entries out.

No I/O and no clock: `apply(envelope, now)` validates, then mutates in-memory state and appends
an `Entry`. Every instruction either applies whole or raises `Refused` having touched nothing
(validate first, mutate after). Mutations go through `_put`, which journals the prior value, so a
batch can be taken for the store (`take_batch`) or undone whole (`rollback`).
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from hashlib import sha256
from typing import Any, Protocol, TypeVar

from bridge.amounts import format_amount
from bridge.core.policy import (
    LEG_CHECKS,
    NO_BALANCE,
    RECEIVING_CHECKS,
    AccountKey,
    Balance,
    StateView,
    UsageKey,
    day_of,
    require,
)
from bridge.crypto import Verifier
from bridge.domain import (
    BRIDGE_SENDER,
    CENTRAL_BANK_KINDS,
    CLOCK_SKEW_MS,
    DAY_MS,
    INT64_MAX,
    MAX_SIGNED_AGE_MS,
    AcceptPvp,
    AdmitBank,
    CancelPvp,
    Currency,
    CurrencyCode,
    DualPvp,
    Entry,
    Envelope,
    ExpirePvp,
    FreezeAccount,
    Genesis,
    Instruction,
    Issue,
    Leg,
    Millis,
    Outcome,
    Participant,
    ParticipantId,
    ParticipantKind,
    ParticipantStatus,
    Pay,
    Policy,
    ProposePvp,
    Receipt,
    Redeem,
    RejectPvp,
    SetParticipantStatus,
    SetPolicy,
    Signature,
    envelope_endorsement_message,
    format_time,
    party_message,
    validate_shape,
)
from bridge.errors import Reason, Refused
from bridge.rates import rate_mismatch

VERDICTS_KEPT = 4096  # endorsement root verdicts kept for the next legs of their batches
PvpKey = tuple[ParticipantId, str]  # (proposer, pvp id = the proposal's instruction id)
ReceiptKey = tuple[ParticipantId, str]  # (sender, instruction id)
Supply = tuple[int, int]  # (issued, redeemed), cumulative
_MISSING: Any = object()
STALE_EXPIRIES = 1024  # entries of closed PvPs the expiry heap may hold before it is rebuilt
_I = TypeVar("_I", bound=Instruction)


class SignatureCheck(Enum):
    """How much cryptography `apply` does.

    ENDORSEMENTS is the bridge's mode: it verifies every central bank signature (senders of
    central-bank instructions, and endorsements, which cover the bank's signature bytes) and
    requires each bank signature to be present; the endorsing central bank verified it.
    ALL also verifies bank signatures (offline log verification). NONE skips cryptography.
    """

    NONE = "none"
    ENDORSEMENTS = "endorsements"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class PvpState:
    proposal: ProposePvp
    status: Outcome  # HELD until SETTLED / REJECTED / CANCELLED / EXPIRED
    day: int  # day number the proposer's leg counted against its daily limit
    closed_seq: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries appended and state rows changed since the last `take_batch`."""

    entries: tuple[Entry, ...]
    changes: Mapping[str, Mapping[Any, Any]]  # table -> key -> new value (None: deleted)
    next_seq: int


STATE_TABLES = (
    "participants",
    "currencies",
    "policies",
    "balances",
    "frozen",
    "pvps",
    "usage",
    "supply",
)


class ReceiptIndex(Protocol):
    """The idempotency index: (sender, instruction id) -> receipt of every applied instruction.

    The ledger adds one receipt per applied instruction; it stays pending until `confirm` (the
    batch is durable) or `rollback` (it is not, and the receipt is forgotten). `get` answers
    pending and committed receipts alike. `MemoryReceipts` holds everything in memory; a node
    uses one whose committed receipts live in its store (`bridge.store.receipts`), so the core
    never sees where they are."""

    def get(self, key: ReceiptKey) -> Receipt | None: ...

    def prefetch(self, keys: Iterable[ReceiptKey]) -> None:
        """A hint: `get` is about to be asked for these keys (a store reads them at once)."""
        ...

    def add(self, key: ReceiptKey, receipt: Receipt) -> None: ...

    def pending(self) -> Mapping[ReceiptKey, Receipt]:
        """The receipts added since the last `confirm` or `rollback`."""
        ...

    def confirm(self) -> None: ...

    def rollback(self) -> None: ...

    def load(self, rows: Iterable[tuple[ReceiptKey, Receipt]]) -> None:
        """Replace the committed receipts held in memory with `rows`."""
        ...

    def items(self) -> Iterator[tuple[ReceiptKey, Receipt]]:
        """The committed receipts held in memory (all of them, for `MemoryReceipts`)."""
        ...


# the committed state of a closed PvP, read where the ledger is stored (None: no such PvP)
ClosedPvpLookup = Callable[[PvpKey], PvpState | None]


class MemoryReceipts:
    """Every receipt in memory: for pure use (tests, offline replays of a log)."""

    __slots__ = ("_committed", "_pending")

    def __init__(self, rows: Iterable[tuple[ReceiptKey, Receipt]] = ()) -> None:
        self._committed: dict[ReceiptKey, Receipt] = dict(rows)
        self._pending: dict[ReceiptKey, Receipt] = {}

    def get(self, key: ReceiptKey) -> Receipt | None:
        found = self._pending.get(key)
        return self._committed.get(key) if found is None else found

    def __getitem__(self, key: ReceiptKey) -> Receipt:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __len__(self) -> int:
        return len(self._committed) + len(self._pending)

    def prefetch(self, keys: Iterable[ReceiptKey]) -> None:
        return None

    def add(self, key: ReceiptKey, receipt: Receipt) -> None:
        self._pending[key] = receipt

    def pending(self) -> Mapping[ReceiptKey, Receipt]:
        return self._pending

    def confirm(self) -> None:
        if self._pending:
            self._committed.update(self._pending)
            self._pending = {}

    def rollback(self) -> None:
        self._pending = {}

    def load(self, rows: Iterable[tuple[ReceiptKey, Receipt]]) -> None:
        self._committed = dict(rows)

    def items(self) -> Iterator[tuple[ReceiptKey, Receipt]]:
        return iter(self._committed.items())


class Ledger:
    """In-memory bridge state and the rules that change it."""

    def __init__(
        self,
        genesis: Genesis,
        *,
        verifier: Verifier | None = None,
        check: SignatureCheck = SignatureCheck.ENDORSEMENTS,
        receipts: ReceiptIndex | None = None,
        closed_pvps: ClosedPvpLookup | None = None,
    ) -> None:
        if check is not SignatureCheck.NONE and verifier is None:
            raise ValueError("a verifier is required unless signature checks are off")
        self.genesis = genesis
        self.verifier = verifier
        self.check = check
        self.participants: dict[ParticipantId, Participant] = {}
        self.currencies: dict[CurrencyCode, Currency] = {}
        self.policies: dict[ParticipantId, Policy] = {}
        self.balances: dict[AccountKey, Balance] = {}
        self.frozen: dict[AccountKey, bool] = {}
        self.pvps: dict[PvpKey, PvpState] = {}
        self.usage: dict[UsageKey, int] = {}
        self.supply: dict[CurrencyCode, Supply] = {}
        self.receipts: ReceiptIndex = MemoryReceipts() if receipts is None else receipts
        # with a lookup, a PvP leaves `pvps` (memory) once its closing is confirmed: a
        # closed PvP changes no more, and is read back only to refuse a late accept, reject,
        # cancel or expiry with the right reason
        self._closed_pvps = closed_pvps
        self.next_seq = 1
        self._tables: dict[str, dict[Any, Any]] = {
            name: getattr(self, name) for name in STATE_TABLES
        }
        self._undo: dict[tuple[str, Any], Any] = {}
        self._entries: list[Entry] = []
        self._batch_seq = 1
        self._expiries: list[tuple[Millis, ParticipantId, str]] = []
        self._verdicts: dict[tuple[bytes, bytes, bytes], bool] = {}
        # endorsement root messages `preverify` worked out, for `apply` to take instead of
        # walking the leg's Merkle path again: by (body hash, party signature, endorsement)
        self._root_messages: dict[tuple[bytes, bytes, Signature], bytes | None] = {}
        self._view = StateView(
            self.participants,
            self.currencies,
            self.policies,
            self.balances,
            self.frozen,
            self.usage,
        )
        self._handlers: dict[str, Callable[[Ledger, Any, Envelope, Millis], Outcome]] = {
            AdmitBank.KIND: Ledger._admit_bank,
            SetParticipantStatus.KIND: Ledger._set_status,
            SetPolicy.KIND: Ledger._set_policy,
            FreezeAccount.KIND: Ledger._freeze_account,
            Issue.KIND: Ledger._issue,
            Redeem.KIND: Ledger._redeem,
            Pay.KIND: Ledger._pay,
            ProposePvp.KIND: Ledger._propose_pvp,
            AcceptPvp.KIND: Ledger._accept_pvp,
            RejectPvp.KIND: Ledger._reject_pvp,
            CancelPvp.KIND: Ledger._cancel_pvp,
            ExpirePvp.KIND: Ledger._expire_pvp,
            DualPvp.KIND: Ledger._dual_pvp,
        }
        self._found(genesis)

    # ------------------------------------------------------------------ construction

    def _found(self, genesis: Genesis) -> None:
        if not genesis.central_banks:
            raise ValueError("genesis needs at least one central bank")
        if not 1 <= genesis.quorum <= len(genesis.central_banks):
            raise ValueError(f"quorum {genesis.quorum} out of range")
        for bank in genesis.central_banks:
            self.participants[bank.id] = Participant(
                bank.id, ParticipantKind.CENTRAL_BANK, bank.jurisdiction, bank.public_key, bank.id
            )
            self.currencies[bank.currency] = Currency(bank.currency, bank.exponent, bank.id)
            self.supply[bank.currency] = (0, 0)

    def load_table(self, name: str, rows: Iterable[tuple[Any, Any]]) -> None:
        """Restore one state table from the store (replaces its contents); "receipts"
        replaces the receipts the index holds in memory."""
        if name == "receipts":
            self.receipts.load(rows)
            return
        table = self._tables[name]
        table.clear()
        table.update(rows)
        if name == "pvps":
            self._rebuild_expiries()

    def tables(self) -> Mapping[str, Mapping[Any, Any]]:
        """The state tables (the receipts are in `receipts`, an index of their own)."""
        return self._tables

    # ------------------------------------------------------------------ batches

    def _put(self, table: str, key: Any, value: Any) -> None:
        rows = self._tables[table]
        slot = (table, key)
        if slot not in self._undo:
            self._undo[slot] = rows.get(key, _MISSING)
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value

    def pending_batch(self) -> Batch:
        """Entries appended and rows changed since the last `confirm` (nothing is cleared)."""
        return Batch(tuple(self._entries), self.pending_changes(), self.next_seq)

    def pending_changes(self) -> dict[str, dict[Any, Any]]:
        """The rows changed since the last `confirm`, as `pending_batch` gives them (table ->
        key -> new value, None: deleted; the pending receipts under "receipts")."""
        changes: dict[str, dict[Any, Any]] = {}
        tables = self._tables
        for table, key in self._undo:
            rows = changes.get(table)
            if rows is None:
                rows = changes[table] = {}
            rows[key] = tables[table].get(key)
        receipts = self.receipts.pending()
        if receipts:
            changes["receipts"] = dict(receipts)
        return changes

    def confirm(self) -> None:
        """The store committed the pending batch: forget how to undo it."""
        if self._closed_pvps is not None:
            pvps = self.pvps
            for table, key in self._undo:
                if table == "pvps":
                    state = pvps.get(key)
                    if state is not None and state.status is not Outcome.HELD:
                        del pvps[key]
        self._undo = {}
        self._entries = []
        self._batch_seq = self.next_seq
        self.receipts.confirm()
        if len(self._expiries) > 2 * len(self.pvps) + STALE_EXPIRIES:
            # a replica never runs `expire_due` (expiries come in the log): drop the heap's
            # entries for PvPs closed since, so it stays the size of what is held
            self._rebuild_expiries()

    def take_batch(self) -> Batch:
        """`pending_batch` then `confirm`, for callers that keep no store."""
        batch = self.pending_batch()
        self.confirm()
        return batch

    def rollback(self) -> None:
        """Undo everything since the last `confirm` (the store failed to commit it)."""
        for (table, key), old in self._undo.items():
            if old is _MISSING:
                self._tables[table].pop(key, None)
            else:
                self._tables[table][key] = old
        self._undo = {}
        self._entries = []
        self.next_seq = self._batch_seq
        self.receipts.rollback()
        self._rebuild_expiries()

    def pending_entries(self) -> int:
        return len(self._entries)

    def set_next_seq(self, next_seq: int) -> None:
        self.next_seq = next_seq
        self._batch_seq = next_seq

    # ------------------------------------------------------------------ applying

    def apply(self, envelope: Envelope, now: Millis) -> Receipt:
        """Apply one signed instruction at logical time `now`, or raise `Refused`."""
        body = envelope.body
        key = (body.sender, body.instruction_id)
        prior = self.receipts.get(key)
        if prior is not None:
            if prior.body_hash == envelope.body_hash():
                return replace(prior, duplicate=True)
            raise Refused(
                Reason.ID_CONFLICT,
                f"instruction id {body.instruction_id!r} of {body.sender} was already used "
                "with a different body",
            )
        if not envelope.shape_checked:  # a decoded envelope's body was checked once already
            validate_shape(body)
        if now > body.valid_until:
            raise Refused(
                Reason.INSTRUCTION_EXPIRED,
                f"instruction {body.instruction_id!r} was valid until {body.valid_until}, "
                f"now {now}",
            )
        check_signed_at(body, now)
        self._check_signatures(envelope)
        outcome = self._handlers[body.KIND](self, body, envelope, now)
        return self._record(envelope, outcome, now, key)

    def _record(
        self, envelope: Envelope, outcome: Outcome, now: Millis, key: ReceiptKey
    ) -> Receipt:
        seq = self.next_seq
        self.next_seq = seq + 1
        receipt = Receipt(key[0], key[1], envelope.body_hash(), outcome, seq)
        self.receipts.add(key, receipt)
        self._entries.append(Entry(seq, now, envelope, outcome))
        return receipt

    def expire_due(self, now: Millis) -> list[Receipt]:
        """Expire every held PvP whose `settle_by` is at or before `now`."""
        receipts = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            settle_by, proposer, pvp_id = heap[0]
            state = self.pvps.get((proposer, pvp_id))
            if (
                state is not None
                and state.status is Outcome.HELD
                and state.proposal.settle_by == settle_by
            ):
                # popped only once applied: if `apply` raises, the PvP stays due
                receipts.append(self.apply(expiry_envelope(proposer, pvp_id, now), now))
            heapq.heappop(heap)
        return receipts

    def next_expiry(self) -> Millis | None:
        """Earliest `settle_by` among held PvPs (may be stale: `expire_due` re-checks)."""
        return self._expiries[0][0] if self._expiries else None

    def _rebuild_expiries(self) -> None:
        self._expiries = [
            (s.proposal.settle_by, k[0], k[1])
            for k, s in self.pvps.items()
            if s.status is Outcome.HELD
        ]
        heapq.heapify(self._expiries)

    # ------------------------------------------------------------------ signatures

    def preverify(self, envelopes: Iterable[Envelope]) -> None:
        """Verify, back to back, the central bank endorsements `apply` is about to check for
        these envelopes, and keep the verdicts for it.

        Only a speed-up: the curve code stays hot in the CPU caches instead of alternating with
        bookkeeping, and the legs of one endorsed batch share one root signature, verified
        once. `apply` still makes every check in its own order and verifies anything it finds
        no verdict for; a verdict is a pure function of (key, message, signature)."""
        verifier = self.verifier
        if verifier is None or self.check is SignatureCheck.NONE:
            return
        verdicts = self._verdicts
        self._root_messages.clear()  # those of the last batch that `apply` did not take
        for envelope in envelopes:
            body = envelope.body
            if body.KIND in CENTRAL_BANK_KINDS or self._known_retry(body):
                continue
            for party in body.parties():
                # anything odd is left to `apply`, to refuse (or raise) in its own order
                with contextlib.suppress(Exception):
                    request = self._endorsement_request(envelope, party)
                    if request is not None and request not in verdicts:
                        self._remember(request, verifier.verify(*request))

    def _remember(self, request: tuple[bytes, bytes, bytes], verdict: bool) -> None:
        """Keep the verdict on an endorsement's root signature: the other legs of its batch
        (in this sequencer batch or the next ones) reuse it. The oldest go first."""
        verdicts = self._verdicts
        verdicts[request] = verdict
        if len(verdicts) > VERDICTS_KEPT:
            del verdicts[next(iter(verdicts))]

    def _known_retry(self, body: Instruction) -> bool:
        """Whether the index holds this instruction already (an index that cannot say, e.g.
        its store is away, is `apply`'s to report)."""
        try:
            return self.receipts.get((body.sender, body.instruction_id)) is not None
        except Exception:
            return False

    def _endorsement_request(
        self, envelope: Envelope, party: ParticipantId
    ) -> tuple[bytes, bytes, bytes] | None:
        """(central bank key, root message, signature) `_check_party` would verify, if it gets
        there (None also when the endorsement's path leads nowhere: `apply` refuses it)."""
        participant = self.participants.get(party)
        signature = envelope.party_signature(party)
        endorsement = envelope.endorsement(party)
        if participant is None or signature is None or endorsement is None:
            return None
        home = self.participants.get(participant.home_central_bank)
        if home is None:
            return None
        message = envelope_endorsement_message(envelope, signature.value, endorsement)
        self._root_messages[(envelope.body_hash(), signature.value, endorsement)] = message
        if message is None:
            return None
        return (home.public_key, message, endorsement.value)

    def _root_message(
        self, envelope: Envelope, signature: Signature, endorsement: Signature
    ) -> bytes | None:
        """`envelope_endorsement_message`, taken from `preverify` when it worked it out."""
        if self._root_messages:  # none at all when nothing was pre-verified (a replica)
            key = (envelope.body_hash(), signature.value, endorsement)
            with contextlib.suppress(KeyError, TypeError):  # TypeError: unhashable, not kept
                return self._root_messages.pop(key)
        return envelope_endorsement_message(envelope, signature.value, endorsement)

    def _check_signatures(self, envelope: Envelope) -> None:
        body = envelope.body
        if isinstance(body, ExpirePvp):
            if body.sender != BRIDGE_SENDER or envelope.signatures:
                raise Refused(Reason.NOT_A_PARTY, "only the bridge itself expires a PvP")
            return
        if body.KIND in CENTRAL_BANK_KINDS:
            self._check_central_bank_signature(envelope)
            return
        parties = body.parties()
        if len(envelope.signatures) != 2 * len(parties):
            raise Refused(
                Reason.MISSING_SIGNATURE
                if len(envelope.signatures) < 2 * len(parties)
                else Reason.MALFORMED,
                f"{body.KIND} needs {2 * len(parties)} signatures (each party and its "
                f"central bank's endorsement), got {len(envelope.signatures)}",
            )
        for party in parties:
            self._check_party(envelope, party)

    def _check_central_bank_signature(self, envelope: Envelope) -> None:
        body = envelope.body
        sender = self.participants.get(body.sender)
        if sender is None:
            raise Refused(Reason.UNKNOWN_SIGNER, f"unknown sender {body.sender}")
        if sender.kind is not ParticipantKind.CENTRAL_BANK:
            raise Refused(Reason.NOT_HOME_CENTRAL_BANK, f"{body.KIND} is for central banks only")
        signature = envelope.party_signature(body.sender)
        if signature is None or len(envelope.signatures) != 1:
            raise Refused(
                Reason.MISSING_SIGNATURE, f"{body.KIND} needs exactly the sender's signature"
            )
        if self.check is not SignatureCheck.NONE:
            self._verify(sender, party_message(envelope.body_bytes), signature.value, "sender")

    def _check_party(self, envelope: Envelope, party: ParticipantId) -> None:
        participant = self.participants.get(party)
        if participant is None:
            if party == envelope.body.sender:
                raise Refused(Reason.UNKNOWN_SIGNER, f"unknown sender {party}")
            raise Refused(Reason.UNKNOWN_PARTICIPANT, f"unknown participant {party}")
        signature = envelope.party_signature(party)
        if signature is None:
            raise Refused(Reason.MISSING_SIGNATURE, f"no signature by {party}")
        endorsement = envelope.endorsement(party)
        if endorsement is None:
            raise Refused(Reason.MISSING_SIGNATURE, f"no central bank endorsement of {party}'s leg")
        if endorsement.signer != participant.home_central_bank:
            raise Refused(
                Reason.NOT_HOME_CENTRAL_BANK,
                f"{party}'s leg must be endorsed by {participant.home_central_bank}, "
                f"not {endorsement.signer}",
            )
        if self.check is SignatureCheck.NONE:
            return
        if self.check is SignatureCheck.ALL:
            self._verify(participant, party_message(envelope.body_bytes), signature.value, "party")
        home = self.participants[participant.home_central_bank]
        message = self._root_message(envelope, signature, endorsement)
        if message is None:
            raise Refused(
                Reason.BAD_SIGNATURE,
                f"endorsement of {party} by {home.id}: leg {endorsement.index} of "
                f"{endorsement.size} has no valid Merkle path to a batch root",
            )
        self._verify(home, message, endorsement.value, f"endorsement of {party}", keep=True)

    def _verify(
        self,
        signer: Participant,
        message: bytes,
        signature: bytes,
        what: str,
        *,
        keep: bool = False,
    ) -> None:
        """Verify, or take the verdict `preverify` kept; `keep`: an endorsement's root
        signature, whose verdict stays for the other legs of its batch."""
        assert self.verifier is not None
        request = (signer.public_key, message, signature)
        try:
            verdict = self._verdicts.get(request) if keep else self._verdicts.pop(request, None)
        except TypeError:  # unhashable values: never pre-verified
            verdict = None
            keep = False
        if verdict is None:
            verdict = self.verifier.verify(signer.public_key, message, signature)
            if keep:
                self._remember(request, verdict)
        if not verdict:
            raise Refused(Reason.BAD_SIGNATURE, f"{what} signature by {signer.id} does not verify")

    # ------------------------------------------------------------------ central bank operations

    def _central_bank(self, body: Instruction) -> Participant:
        sender = self.participants[body.sender]  # checked by _check_central_bank_signature
        return sender

    def _own_bank(self, central_bank: Participant, bank_id: ParticipantId) -> Participant:
        bank = self.participants.get(bank_id)
        if bank is None:
            raise Refused(Reason.UNKNOWN_PARTICIPANT, f"unknown participant {bank_id}")
        if bank.kind is not ParticipantKind.COMMERCIAL_BANK:
            raise Refused(Reason.NOT_A_BANK, f"{bank_id} is not a commercial bank")
        if bank.home_central_bank != central_bank.id:
            raise Refused(
                Reason.NOT_HOME_CENTRAL_BANK,
                f"{bank_id} belongs to {bank.home_central_bank}, not {central_bank.id}",
            )
        return bank

    def _issued_currency(self, central_bank: Participant, code: CurrencyCode) -> Currency:
        currency = self.currencies.get(code)
        if currency is None:
            raise Refused(Reason.UNKNOWN_CURRENCY, f"unknown currency {code}")
        if currency.issuer != central_bank.id:
            raise Refused(
                Reason.NOT_ISSUER, f"{code} is issued by {currency.issuer}, not {central_bank.id}"
            )
        return currency

    def _admit_bank(self, body: AdmitBank, envelope: Envelope, now: Millis) -> Outcome:
        central_bank = self._central_bank(body)
        if body.bank in self.participants or body.bank == BRIDGE_SENDER:
            raise Refused(Reason.ALREADY_REGISTERED, f"participant {body.bank} already exists")
        self._put(
            "participants",
            body.bank,
            Participant(
                body.bank,
                ParticipantKind.COMMERCIAL_BANK,
                central_bank.jurisdiction,
                body.public_key,
                central_bank.id,
            ),
        )
        return Outcome.APPLIED

    def _set_status(self, body: SetParticipantStatus, envelope: Envelope, now: Millis) -> Outcome:
        bank = self._own_bank(self._central_bank(body), body.participant)
        self._put("participants", bank.id, replace(bank, status=ParticipantStatus(body.status)))
        return Outcome.APPLIED

    def _set_policy(self, body: SetPolicy, envelope: Envelope, now: Millis) -> Outcome:
        policy = Policy(
            body.per_transfer_limit, body.per_day_limit, tuple(body.allowed_jurisdictions)
        )
        self._put("policies", body.sender, policy)
        return Outcome.APPLIED

    def _freeze_account(self, body: FreezeAccount, envelope: Envelope, now: Millis) -> Outcome:
        central_bank = self._central_bank(body)
        self._issued_currency(central_bank, body.currency)
        participant = self.participants.get(body.participant)
        if participant is None or participant.kind is not ParticipantKind.COMMERCIAL_BANK:
            raise Refused(Reason.UNKNOWN_PARTICIPANT, f"no bank {body.participant}")
        self._put("frozen", (body.participant, body.currency), True if body.frozen else None)
        return Outcome.APPLIED

    def _issue(self, body: Issue, envelope: Envelope, now: Millis) -> Outcome:
        central_bank = self._central_bank(body)
        self._issued_currency(central_bank, body.currency)
        bank = self._own_bank(central_bank, body.to)
        if bank.status is not ParticipantStatus.ACTIVE:
            raise Refused(Reason.PARTICIPANT_SUSPENDED, f"participant {bank.id} is suspended")
        account = (bank.id, body.currency)
        if account in self.frozen:
            raise Refused(Reason.ACCOUNT_FROZEN, f"account {bank.id}/{body.currency} is frozen")
        issued, redeemed = self.supply[body.currency]
        if issued + body.amount > INT64_MAX:
            raise Refused(
                Reason.AMOUNT_OVERFLOW, f"total {body.currency} issuance would exceed int64"
            )
        available, held = self.balances.get(account, NO_BALANCE)
        self._put("supply", body.currency, (issued + body.amount, redeemed))
        self._put("balances", account, (available + body.amount, held))
        return Outcome.ISSUED

    def _redeem(self, body: Redeem, envelope: Envelope, now: Millis) -> Outcome:
        currency = self.currencies.get(body.currency)
        if currency is None:
            raise Refused(Reason.UNKNOWN_CURRENCY, f"unknown currency {body.currency}")
        bank = self._own_bank(self.participants[currency.issuer], body.sender)
        if bank.status is not ParticipantStatus.ACTIVE:
            raise Refused(Reason.PARTICIPANT_SUSPENDED, f"participant {bank.id} is suspended")
        account = (bank.id, body.currency)
        if account in self.frozen:
            raise Refused(Reason.ACCOUNT_FROZEN, f"account {bank.id}/{body.currency} is frozen")
        available, held = self.balances.get(account, NO_BALANCE)
        if available < body.amount:
            exponent = currency.exponent
            raise Refused(
                Reason.INSUFFICIENT_FUNDS,
                f"{bank.id} has {format_amount(available, exponent, body.currency)} available, "
                f"needs {format_amount(body.amount, exponent, body.currency)}",
            )
        issued, redeemed = self.supply[body.currency]
        self._put("supply", body.currency, (issued, redeemed + body.amount))
        self._put("balances", account, (available - body.amount, held))
        return Outcome.REDEEMED

    # ------------------------------------------------------------------ payments and PvP

    def _move(
        self, leg: Leg, now: Millis, *, from_held: bool = False, count_usage: bool = True
    ) -> None:
        balances = self.balances
        payer_key = (leg.payer, leg.currency)
        payee_key = (leg.payee, leg.currency)
        available, held = balances.get(payer_key, NO_BALANCE)
        if from_held:
            self._put("balances", payer_key, (available, held - leg.amount))
        else:
            self._put("balances", payer_key, (available - leg.amount, held))
        available, held = balances.get(payee_key, NO_BALANCE)
        self._put("balances", payee_key, (available + leg.amount, held))
        if count_usage:
            self._count_usage(leg.payer, leg.currency, day_of(now), leg.amount)

    def _count_usage(
        self, payer: ParticipantId, currency: CurrencyCode, day: int, amount: int
    ) -> None:
        key = (payer, currency, day)
        total = self.usage.get(key, 0) + amount
        self._put("usage", key, total if total else None)

    def _pay(self, body: Pay, envelope: Envelope, now: Millis) -> Outcome:
        leg = Leg(body.sender, body.payee, body.currency, body.amount)
        require(self._view, leg, now, LEG_CHECKS)
        self._move(leg, now)
        return Outcome.SETTLED

    def _check_rate(self, body: ProposePvp | DualPvp) -> None:
        """Refuse a PvP whose stated rate contradicts its two amounts (see bridge.rates);
        an unknown currency is left to the leg checks to refuse."""
        pay = self.currencies.get(body.pay_currency)
        receive = self.currencies.get(body.receive_currency)
        if pay is None or receive is None:
            return
        mismatch = rate_mismatch(
            (pay.code, body.pay_amount, pay.exponent),
            (receive.code, body.receive_amount, receive.exponent),
            body.rate,
        )
        if mismatch is not None:
            raise Refused(Reason.RATE_MISMATCH, f"{body.KIND}: {mismatch}")

    def _dual_pvp(self, body: DualPvp, envelope: Envelope, now: Millis) -> Outcome:
        self._check_rate(body)
        leg_a, leg_b = body.legs()
        view = self._view
        require(view, leg_a, now, LEG_CHECKS)
        require(view, leg_b, now, LEG_CHECKS)
        self._move(leg_a, now)
        self._move(leg_b, now)
        return Outcome.SETTLED

    def _propose_pvp(self, body: ProposePvp, envelope: Envelope, now: Millis) -> Outcome:
        if body.settle_by <= now:
            raise Refused(
                Reason.PVP_EXPIRED, f"settle_by {body.settle_by} is not after now ({now})"
            )
        self._check_rate(body)
        leg_a, leg_b = body.legs()
        require(self._view, leg_a, now, LEG_CHECKS)
        require(self._view, leg_b, now, RECEIVING_CHECKS)
        key = (body.sender, body.pay_currency)
        available, held = self.balances.get(key, NO_BALANCE)
        day = day_of(now)
        self._put("balances", key, (available - body.pay_amount, held + body.pay_amount))
        self._count_usage(body.sender, body.pay_currency, day, body.pay_amount)
        self._put("pvps", (body.sender, body.instruction_id), PvpState(body, Outcome.HELD, day))
        heapq.heappush(self._expiries, (body.settle_by, body.sender, body.instruction_id))
        return Outcome.HELD

    def _pvp(self, key: PvpKey) -> PvpState | None:
        """A PvP held or closed in memory, or else a closed one read back where it is stored."""
        state = self.pvps.get(key)
        if state is None and self._closed_pvps is not None:
            state = self._closed_pvps(key)
        return state

    def _held_pvp(
        self, proposer: ParticipantId, pvp_id: str, caller: ParticipantId, *, as_counterparty: bool
    ) -> PvpState:
        state = self._pvp((proposer, pvp_id))
        if state is None:
            raise Refused(Reason.UNKNOWN_PVP, f"no PvP {pvp_id!r} proposed by {proposer}")
        party = state.proposal.counterparty if as_counterparty else state.proposal.sender
        if caller != party:
            raise Refused(
                Reason.NOT_A_PARTY,
                f"{caller} is not the {'counterparty' if as_counterparty else 'proposer'} "
                f"of PvP {pvp_id!r}",
            )
        if state.status is not Outcome.HELD:
            raise Refused(Reason.PVP_NOT_PENDING, f"PvP {pvp_id!r} is already {state.status.value}")
        return state

    def _accept_pvp(self, body: AcceptPvp, envelope: Envelope, now: Millis) -> Outcome:
        state = self._held_pvp(body.proposer, body.pvp_id, body.sender, as_counterparty=True)
        proposal = state.proposal
        if now >= proposal.settle_by:
            raise Refused(
                Reason.PVP_EXPIRED, f"PvP {body.pvp_id!r} expired at {proposal.settle_by}"
            )
        if body.terms_hash != proposal.terms_hash():
            raise Refused(
                Reason.PVP_TERMS_MISMATCH, f"terms hash does not match PvP {body.pvp_id!r}"
            )
        leg_a, leg_b = proposal.legs()
        require(self._view, leg_b, now, LEG_CHECKS)
        require(self._view, leg_a, now, RECEIVING_CHECKS)
        self._move(leg_a, now, from_held=True, count_usage=False)
        self._move(leg_b, now)
        self._put(
            "pvps",
            (body.proposer, body.pvp_id),
            replace(state, status=Outcome.SETTLED, closed_seq=self.next_seq),
        )
        return Outcome.SETTLED

    def _release(self, state: PvpState, outcome: Outcome) -> Outcome:
        proposal = state.proposal
        key = (proposal.sender, proposal.pay_currency)
        available, held = self.balances.get(key, NO_BALANCE)
        self._put("balances", key, (available + proposal.pay_amount, held - proposal.pay_amount))
        self._count_usage(proposal.sender, proposal.pay_currency, state.day, -proposal.pay_amount)
        self._put(
            "pvps",
            (proposal.sender, proposal.instruction_id),
            replace(state, status=outcome, closed_seq=self.next_seq),
        )
        return outcome

    def _reject_pvp(self, body: RejectPvp, envelope: Envelope, now: Millis) -> Outcome:
        state = self._held_pvp(body.proposer, body.pvp_id, body.sender, as_counterparty=True)
        return self._release(state, Outcome.REJECTED)

    def _cancel_pvp(self, body: CancelPvp, envelope: Envelope, now: Millis) -> Outcome:
        state = self._held_pvp(body.sender, body.pvp_id, body.sender, as_counterparty=False)
        return self._release(state, Outcome.CANCELLED)

    def _expire_pvp(self, body: ExpirePvp, envelope: Envelope, now: Millis) -> Outcome:
        state = self._pvp((body.proposer, body.pvp_id))
        if state is None:
            raise Refused(Reason.UNKNOWN_PVP, f"no PvP {body.pvp_id!r} proposed by {body.proposer}")
        if state.status is not Outcome.HELD:
            raise Refused(
                Reason.PVP_NOT_PENDING, f"PvP {body.pvp_id!r} is already {state.status.value}"
            )
        if now < state.proposal.settle_by:
            raise Refused(
                Reason.NOT_YET_EXPIRED,
                f"PvP {body.pvp_id!r} settles until {state.proposal.settle_by}",
            )
        return self._release(state, Outcome.EXPIRED)

    # ------------------------------------------------------------------ queries

    def balance(self, participant: ParticipantId, currency: CurrencyCode) -> Balance:
        return self.balances.get((participant, currency), NO_BALANCE)

    def accounts_of(self, participant: ParticipantId) -> Iterator[tuple[CurrencyCode, Balance]]:
        for (owner, currency), balance in sorted(self.balances.items()):
            if owner == participant:
                yield currency, balance

    def conservation_errors(self) -> list[str]:
        """Per currency: sum of balances and holds must equal issued minus redeemed."""
        totals: dict[CurrencyCode, int] = dict.fromkeys(self.currencies, 0)
        errors = []
        for (owner, currency), (available, held) in self.balances.items():
            if available < 0 or held < 0:
                errors.append(f"negative balance {owner}/{currency}: {available}/{held}")
            totals[currency] = totals.get(currency, 0) + available + held
        for currency, total in totals.items():
            issued, redeemed = self.supply.get(currency, (0, 0))
            if total != issued - redeemed:
                errors.append(
                    f"{currency}: balances {total} != issued {issued} - redeemed {redeemed}"
                )
        return errors


def check_signed_at(body: Instruction, now: Millis) -> None:
    """Refuse a body whose signing time the ledger's own time `now` cannot accept: more than
    `CLOCK_SKEW_MS` ahead of it, or more than `MAX_SIGNED_AGE_MS` behind it. Only ledger time
    is read, so a replay of the log decides exactly as the sequencer did."""
    signed_at = body.signed_at
    if signed_at > now + CLOCK_SKEW_MS:
        raise Refused(
            Reason.INVALID_TIME,
            f"{body.KIND} {body.instruction_id!r} is signed at {format_time(signed_at)}, "
            f"{signed_at - now:,} ms ahead of the ledger's time {format_time(now)}; at most "
            f"{CLOCK_SKEW_MS:,} ms of clock skew is allowed: check the signer's clock",
        )
    if signed_at < now - MAX_SIGNED_AGE_MS:
        raise Refused(
            Reason.INVALID_TIME,
            f"{body.KIND} {body.instruction_id!r} is signed at {format_time(signed_at)}, "
            f"more than {MAX_SIGNED_AGE_MS // DAY_MS} days before the ledger's time "
            f"{format_time(now)}: sign a new instruction",
        )


def expiry_envelope(proposer: ParticipantId, pvp_id: str, now: Millis) -> Envelope:
    """The bridge's own instruction that expires one held PvP (unsigned, deterministic id),
    valid until and signed at the ledger time `now`."""
    digest = sha256(f"{proposer}\x00{pvp_id}".encode()).hexdigest()[:40]
    body = ExpirePvp(f"expire-{digest}", BRIDGE_SENDER, now, proposer, pvp_id, signed_at=now)
    return Envelope.of(body)


def replay(
    genesis: Genesis, entries: Iterable[Entry], *, verifier: Verifier | None, check: SignatureCheck
) -> Ledger:
    """Rebuild state from genesis and a log; raise Refused on the first entry that disagrees."""
    ledger = Ledger(genesis, verifier=verifier, check=check)
    for entry in entries:
        if entry.seq != ledger.next_seq:
            raise Refused(Reason.MALFORMED, f"entry {entry.seq}: expected seq {ledger.next_seq}")
        receipt = ledger.apply(entry.envelope, entry.time)
        if receipt.duplicate or receipt.outcome is not entry.outcome:
            raise Refused(
                Reason.MALFORMED,
                f"entry {entry.seq}: replay gives {receipt.outcome.value}, "
                f"log says {entry.outcome.value}",
            )
        if len(ledger._entries) > 4096:
            ledger.take_batch()
    ledger.take_batch()
    return ledger
