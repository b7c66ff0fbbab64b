"""The scripted demo: liquidity, corridor payments and PvP FX trades on a running network.

What it shows, in order: each central bank issues its currency to its banks; BOT restricts THB to
the CN/HK corridor; cross-border trade payments settle instantly; an ICBC/HSBCHK CNY-HKD PvP is
proposed (ICBC's CNY held), then accepted (both legs in one step); a KBANK/BOCQ THB-CNY PvP
settles dual-signed in one request; an ENBD/BOCQ AED-CNY proposal is never accepted and expires,
releasing its hold; a THB payment to an AE bank is refused by BOT's policy and changes nothing;
a retried instruction id returns its original receipt. Then: finality, offline verification of
the whole log, and a short Locust load with its cross-check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from rich.console import Console
from rich.table import Table

from bridge.reference_rates import liquidity
from participants.launcher import Network
from participants.sdk import (
    BankClient,
    BridgeRpcError,
    CentralBankAdminClient,
    InstructionResult,
    format_minor,
    to_minor,
)

EXPIRY_MS = 2_500
ACCEPTED = frozenset({"SETTLED", "ISSUED", "HELD", "APPLIED", "EXPIRED"})


@dataclass(frozen=True, slots=True)
class Row:
    step: str
    parties: str
    legs: str
    outcome: str
    seq: str = ""
    note: str = ""


class DemoRun:
    def __init__(self, network: Network, console: Console) -> None:
        self.network = network
        self.console = console
        self.rows: list[Row] = []
        self.exponents = {cb.currency: cb.exponent for cb in network.config.central_banks}
        self._banks: dict[str, BankClient] = {}
        self._admins: dict[str, CentralBankAdminClient] = {}
        self.last: tuple[str, str] | None = None  # (bank, instruction id) settled last

    # ------------------------------------------------------------------ helpers

    def bank(self, bank_id: str) -> BankClient:
        if bank_id not in self._banks:
            self._banks[bank_id] = BankClient.from_network(self.network.directory, bank_id)
        return self._banks[bank_id]

    def admin(self, central_bank: str) -> CentralBankAdminClient:
        if central_bank not in self._admins:
            self._admins[central_bank] = CentralBankAdminClient.from_network(
                self.network.directory, central_bank
            )
        return self._admins[central_bank]

    def close(self) -> None:
        for bank in self._banks.values():
            bank.close()
        for admin in self._admins.values():
            admin.close()

    def minor(self, major: str, currency: str) -> int:
        return to_minor(major, self.exponents[currency])

    def show(self, amount: int, currency: str) -> str:
        return f"{format_minor(amount, self.exponents[currency])} {currency}"

    def record(self, row: Row) -> None:
        self.rows.append(row)
        colour = "green" if row.outcome in ACCEPTED else "yellow"
        outcome = f"[{colour}]{row.outcome:<19}[/{colour}]"
        self.console.print(f"  {outcome} {row.step}: {row.parties}  {row.legs}  {row.note}")

    def attempt(
        self, step: str, parties: str, legs: str, action: Callable[[], InstructionResult]
    ) -> InstructionResult | None:
        """Run one instruction and record its outcome, or the refusal it met."""
        try:
            result = action()
        except BridgeRpcError as error:
            outcome = f"{error.code.name} {error.reason.value}"
            self.record(Row(step, parties, legs, outcome, note=error.message))
            return None
        self.record(Row(step, parties, legs, result.outcome.value, str(result.seq)))
        return result

    # ------------------------------------------------------------------ the script

    def wait_for_admissions(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for cb in self.network.config.central_banks:
            wanted = {bank.id for bank in cb.banks}
            while not wanted <= {p.id for p in self.admin(cb.id).list_banks()}:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{cb.id} has not admitted all of {sorted(wanted)}")
                time.sleep(0.2)

    def issue_liquidity(self) -> None:
        self.console.rule("liquidity: each central bank issues its currency to its banks")
        for cb in self.network.config.central_banks:
            amount = liquidity(cb.currency, cb.exponent)  # a bank's liquidity, ~2bn CNY worth
            for bank in cb.banks:
                issue = partial(self.admin(cb.id).issue, bank.id, cb.currency, amount)
                self.attempt(
                    "issuance", f"{cb.id} -> {bank.id}", self.show(amount, cb.currency), issue
                )

    def set_policies(self) -> None:
        self.console.rule("policy: BOT allows THB only in the CN and HK corridors")
        policy = partial(self.admin("BOT").set_policy, allowed_jurisdictions=("CN", "HK"))
        self.attempt("policy", "BOT", "THB corridors: TH, CN, HK", policy)

    def payments(self) -> None:
        self.console.rule("cross-border trade payments (instant settlement)")
        trades = [
            ("ICBC", "HSBCHK", "CNY", "1250000", "INV-CQ-2025-0117 machine parts Chongqing-HK"),
            ("HSBCHK", "KBANK", "HKD", "830000", "INV-HK-88412 electronics HK-Bangkok"),
            ("ENBD", "BOCQ", "AED", "412500", "B/L MSCU7712093 Jebel Ali-Chongqing"),
        ]
        for payer, payee, currency, major, reference in trades:
            amount = self.minor(major, currency)
            pay = partial(self.bank(payer).pay, payee, currency, amount, reference)
            self.attempt("payment", f"{payer} -> {payee}", self.show(amount, currency), pay)

    def pvp_propose_accept(self) -> None:
        self.console.rule("PvP, propose then accept: ICBC sells CNY for HKD")
        pay, receive = self.minor("7000000", "CNY"), self.minor("7560000", "HKD")
        legs = f"{self.show(pay, 'CNY')} <-> {self.show(receive, 'HKD')}"
        propose = partial(
            self.bank("ICBC").propose_pvp,
            "HSBCHK",
            pay=("CNY", pay),
            receive=("HKD", receive),
            rate="1.08",
            settle_within_ms=60_000,
            reference="FX for INV-CQ-2025-0117",
        )
        proposal = self.attempt("PvP propose", "ICBC -> HSBCHK", legs, propose)
        if proposal is None:
            return
        held = self.bank("ICBC").balance("CNY")
        self.console.print(
            f"    while held: ICBC available {self.show(held.available, 'CNY')}, "
            f"held {self.show(held.held, 'CNY')}"
        )
        accept = partial(self.bank("HSBCHK").accept_pvp, "ICBC", proposal.instruction_id)
        self.attempt("PvP accept", "HSBCHK -> ICBC", legs, accept)

    def pvp_dual(self) -> None:
        self.console.rule("PvP, dual-signed: KBANK and BOCQ swap THB and CNY in one instruction")
        pay, receive = self.minor("10000000", "THB"), self.minor("2200000", "CNY")
        legs = f"{self.show(pay, 'THB')} <-> {self.show(receive, 'CNY')}"

        def settle() -> InstructionResult:
            # KBANK signs its side off-line; BOCQ adds its signature and submits through PBOC,
            # which obtains BOT's endorsement of KBANK's leg from BOT's node.
            offer = self.bank("KBANK").sign_dual_pvp(
                "BOCQ",
                pay=("THB", pay),
                receive=("CNY", receive),
                rate="0.22",
                reference="FX for rice shipment B/L ONEYBKK0042",
            )
            return self.bank("BOCQ").submit_dual_pvp(offer)

        self.attempt("PvP dual-signed", "KBANK <-> BOCQ", legs, settle)

    def pvp_expiry(self) -> None:
        self.console.rule("PvP that nobody accepts: it expires and releases the hold")
        pay, receive = self.minor("500000", "AED"), self.minor("980000", "CNY")
        legs = f"{self.show(pay, 'AED')} <-> {self.show(receive, 'CNY')}"
        propose = partial(
            self.bank("ENBD").propose_pvp,
            "BOCQ",
            pay=("AED", pay),
            receive=("CNY", receive),
            rate="1.96",
            settle_within_ms=EXPIRY_MS,
        )
        proposal = self.attempt("PvP propose", "ENBD -> BOCQ", legs, propose)
        if proposal is None:
            return
        deadline = time.monotonic() + 15
        info = self.bank("ENBD").pvp("ENBD", proposal.instruction_id)
        while info.status.value == "HELD" and time.monotonic() < deadline:
            time.sleep(0.25)
            info = self.bank("ENBD").pvp("ENBD", proposal.instruction_id)
        held = self.bank("ENBD").balance("AED").held
        note = f"nobody accepted; ENBD's AED hold is now {self.show(held, 'AED')}"
        self.record(
            Row("PvP expiry", "ENBD -> BOCQ", legs, info.status.value, str(info.closed_seq), note)
        )

    def refusals(self) -> None:
        self.console.rule("refusals change nothing")
        before = self.bank("SCB").balance("THB")
        amount = self.minor("100000", "THB")
        pay = partial(self.bank("SCB").pay, "FAB", "THB", amount, "THB outside BOT's corridors")
        self.attempt("policy refusal", "SCB -> FAB", self.show(amount, "THB"), pay)
        # one million yuan more than BOCQ holds, whatever its liquidity
        huge = self.bank("BOCQ").balance("CNY").available + self.minor("1000000", "CNY")
        pay = partial(self.bank("BOCQ").pay, "ICBC", "CNY", huge)
        self.attempt("funds refusal", "BOCQ -> ICBC", self.show(huge, "CNY"), pay)
        after = self.bank("SCB").balance("THB")
        self.console.print(
            f"    SCB THB before {self.show(before.available, 'THB')}, "
            f"after {self.show(after.available, 'THB')}"
        )
        self.console.rule("a retried instruction settles once")
        amount = self.minor("25000", "HKD")
        client = self.bank("BOCHK")
        first = client.pay("HSBCHK", "HKD", amount, instruction_id="demo-retry-1")
        again = client.pay("HSBCHK", "HKD", amount, instruction_id="demo-retry-1")
        note = f"resubmitted: duplicate={again.duplicate}, same seq: {again.seq == first.seq}"
        self.record(
            Row(
                "retry",
                "BOCHK -> HSBCHK",
                self.show(amount, "HKD"),
                again.outcome.value,
                str(again.seq),
                note,
            )
        )
        self.last = ("BOCHK", first.instruction_id)

    def settlement_table(self) -> None:
        table = Table(title="settlements (seq: place in the settlement log)")
        for column in ("step", "parties", "legs", "outcome", "seq"):
            table.add_column(column, overflow="fold")
        for row in self.rows:
            table.add_row(row.step, row.parties, row.legs, row.outcome, row.seq)
        self.console.print(table)

    def verify(self) -> bool:
        from bridge.log.source import open_source
        from bridge.log.verify import verify_log

        self.console.rule("finality and offline verification of the log")
        if self.last is not None:
            bank, instruction_id = self.last
            final = self.bank(bank).wait_final(instruction_id, timeout=30)
            self.console.print(f"last instruction is final in block {final.block_height}")
        source = open_source(self.network.config.bridge_db)
        try:
            report = verify_log(source)
        finally:
            source.close()
        if not report.ok:
            self.console.print(f"[red]log verification failed[/red]: {report.failure}")
            return False
        self.console.print(
            f"[green]log verified[/green]: {report.blocks} blocks, {report.entries} entries, "
            f"{report.signatures} signatures, {report.attestations} attestations; "
            f"final, verified height {report.last_final_height} of {report.head_height}; "
            "conservation holds in every currency"
        )
        return True

    def load(self, seconds: int) -> bool:
        from loadtest.runner import run_scenario

        self.console.rule(f"short load: Locust 'steady' scenario for {seconds} s")
        # the load trades THB in every corridor: BOT lifts its restriction first
        lift = partial(self.admin("BOT").set_policy, allowed_jurisdictions=())
        self.attempt("policy", "BOT", "THB corridors: all", lift)
        result = run_scenario("steady", self.network, seconds=seconds, users=20)
        self.console.print(result.summary())
        return result.ok


def run_demo(network: Network, *, console: Console, load_seconds: int) -> bool:
    run = DemoRun(network, console)
    try:
        run.wait_for_admissions()
        run.issue_liquidity()
        run.set_policies()
        run.payments()
        run.pvp_propose_accept()
        run.pvp_dual()
        run.pvp_expiry()
        run.refusals()
        run.settlement_table()
        ok = run.verify()
        if load_seconds:
            ok = run.load(load_seconds) and ok
        return ok
    finally:
        run.close()
