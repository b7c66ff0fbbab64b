"""The scripted demo: liquidity, corridor payments and PvP FX trades on a running network.

What it shows, in order: each central bank issues its currency to its banks; BOT restricts THB to
the CN/HK corridor; cross-border trade payments settle instantly; an ICBC/HSBCHK CNY-HKD PvP is
proposed (ICBC's CNY held), then accepted (both legs in one step); a KBANK/BOCQ THB-CNY PvP
settles dual-signed in one request; an ENBD/BOCQ AED-CNY proposal is never accepted and expires,
releasing its hold; a THB payment to an AE bank is refused by BOT's policy and changes nothing;
a retried instruction id returns its original receipt. Then: finality, offline verification of
the log, and a short Locust load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from rich.console import Console
from rich.table import Table

from bridge.core.ledger import SignatureCheck
from participants.launcher import Network
from participants.sdk import BankClient, BridgeRpcError, CentralBankAdminClient

LIQUIDITY_MAJOR_UNITS = 50_000_000  # per bank, in its home currency
EXPIRY_MS = 2_500


@dataclass
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

    # ------------------------------------------------------------------ clients

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
        for client in [*self._banks.values(), *self._admins.values()]:
            client.close()

    def minor(self, major: int | str, currency: str) -> int:
        return int(Decimal(major) * 10 ** self.exponents[currency])

    def show(self, amount: int, currency: str) -> str:
        exponent = self.exponents[currency]
        return f"{Decimal(amount) / 10**exponent:,.{exponent}f} {currency}"

    def record(self, row: Row) -> None:
        self.rows.append(row)
        colour = "green" if row.outcome in ("SETTLED", "ISSUED", "HELD", "APPLIED") else "yellow"
        self.console.print(
            f"  [{colour}]{row.outcome:<19}[/{colour}] {row.step}: {row.parties} {row.legs} {row.note}"
        )

    def attempt(
        self, step: str, parties: str, legs: str, action: Callable[[], object]
    ) -> object | None:
        try:
            result = action()
        except BridgeRpcError as error:
            self.record(
                Row(
                    step,
                    parties,
                    legs,
                    f"{error.code.name}",
                    note=f"{error.reason.value}: {error.message}",
                )
            )
            return None
        outcome = getattr(result, "outcome", None)
        seq = getattr(result, "seq", "")
        self.record(Row(step, parties, legs, str(getattr(outcome, "value", outcome)), str(seq)))
        return result

    # ------------------------------------------------------------------ the script

    def wait_for_admissions(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for cb in self.network.config.central_banks:
            wanted = {bank.id for bank in cb.banks}
            while True:
                admitted = {p.id for p in self.admin(cb.id).list_banks()}
                if wanted <= admitted:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{cb.id} has not admitted {sorted(wanted - admitted)}")
                time.sleep(0.2)

    def issue_liquidity(self) -> None:
        self.console.rule("liquidity: each central bank issues its currency to its banks")
        for cb in self.network.config.central_banks:
            for bank in cb.banks:
                amount = self.minor(LIQUIDITY_MAJOR_UNITS, cb.currency)
                self.attempt(
                    "issuance",
                    f"{cb.id} -> {bank.id}",
                    self.show(amount, cb.currency),
                    lambda cb=cb, bank=bank, amount=amount: self.admin(cb.id).issue(
                        bank.id, cb.currency, amount
                    ),
                )

    def set_policies(self) -> None:
        self.console.rule("policy: BOT allows THB only in the CN and HK corridors")
        self.attempt(
            "policy",
            "BOT",
            "THB corridors: TH, CN, HK",
            lambda: self.admin("BOT").set_policy(allowed_jurisdictions=("CN", "HK")),
        )

    def payments(self) -> None:
        self.console.rule("cross-border trade payments (instant settlement)")
        trades = [
            (
                "ICBC",
                "HSBCHK",
                "CNY",
                1_250_000,
                "INV-CQ-2025-0117 machine parts, Chongqing->Hong Kong",
            ),
            ("HSBCHK", "KBANK", "HKD", 830_000, "INV-HK-88412 electronics, Hong Kong->Bangkok"),
            ("ENBD", "BOCQ", "AED", 412_500, "B/L MSCU7712093 Jebel Ali->Chongqing"),
        ]
        for payer, payee, currency, major, reference in trades:
            amount = self.minor(major, currency)
            self.attempt(
                "payment",
                f"{payer} -> {payee}",
                self.show(amount, currency),
                lambda payer=payer, payee=payee, currency=currency, amount=amount, reference=reference: (
                    self.bank(payer).pay(payee, currency, amount, reference=reference)
                ),
            )

    def pvp_propose_accept(self) -> None:
        self.console.rule("PvP, propose then accept: ICBC sells CNY for HKD")
        pay, receive = self.minor(7_000_000, "CNY"), self.minor(7_560_000, "HKD")
        legs = f"{self.show(pay, 'CNY')} <-> {self.show(receive, 'HKD')}"
        proposal = self.attempt(
            "PvP propose",
            "ICBC -> HSBCHK",
            legs,
            lambda: self.bank("ICBC").propose_pvp(
                "HSBCHK",
                pay=("CNY", pay),
                receive=("HKD", receive),
                rate="1.08",
                settle_within_ms=60_000,
                reference="FX for INV-CQ-2025-0117",
            ),
        )
        if proposal is None:
            return
        pvp_id = proposal.instruction_id  # type: ignore[attr-defined]
        held = self.bank("ICBC").balance("CNY")
        self.console.print(
            f"    ICBC CNY while held: available {self.show(held.available, 'CNY')}, held {self.show(held.held, 'CNY')}"
        )
        self.attempt(
            "PvP accept",
            "HSBCHK -> ICBC",
            legs,
            lambda: self.bank("HSBCHK").accept_pvp("ICBC", pvp_id),
        )

    def pvp_dual(self) -> None:
        self.console.rule("PvP, dual-signed: KBANK and BOCQ swap THB and CNY in one instruction")
        pay, receive = self.minor(10_000_000, "THB"), self.minor(2_000_000, "CNY")
        legs = f"{self.show(pay, 'THB')} <-> {self.show(receive, 'CNY')}"

        def settle() -> object:
            offer = self.bank("KBANK").sign_dual_pvp(
                "BOCQ", pay=("THB", pay), receive=("CNY", receive), rate="0.2"
            )
            countersigned = self.bank("BOCQ").countersign_dual_pvp(offer)
            return self.bank("KBANK").submit_dual_pvp(countersigned)

        self.attempt("PvP dual-signed", "KBANK <-> BOCQ", legs, settle)

    def pvp_expiry(self) -> None:
        self.console.rule("PvP that nobody accepts: it expires and releases the hold")
        pay, receive = self.minor(500_000, "AED"), self.minor(980_000, "CNY")
        legs = f"{self.show(pay, 'AED')} <-> {self.show(receive, 'CNY')}"
        proposal = self.attempt(
            "PvP propose",
            "ENBD -> BOCQ",
            legs,
            lambda: self.bank("ENBD").propose_pvp(
                "BOCQ",
                pay=("AED", pay),
                receive=("CNY", receive),
                rate="1.96",
                settle_within_ms=EXPIRY_MS,
            ),
        )
        if proposal is None:
            return
        pvp_id = proposal.instruction_id  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            info = self.bank("ENBD").pvp("ENBD", pvp_id)
            if info.status.value != "HELD":
                break
            time.sleep(0.25)
        balance = self.bank("ENBD").balance("AED")
        self.record(
            Row(
                "PvP expiry",
                "ENBD -> BOCQ",
                legs,
                info.status.value,
                note=f"ENBD AED held now {self.show(balance.held, 'AED')}",
            )
        )

    def refusals(self) -> None:
        self.console.rule("refusals change nothing")
        before = self.bank("SCB").balance("THB")
        amount = self.minor(100_000, "THB")
        self.attempt(
            "policy refusal",
            "SCB -> FAB",
            self.show(amount, "THB"),
            lambda: self.bank("SCB").pay("FAB", "THB", amount, reference="outside BOT's corridors"),
        )
        huge = self.minor(10**9, "CNY")
        self.attempt(
            "funds refusal",
            "BOCQ -> ICBC",
            self.show(huge, "CNY"),
            lambda: self.bank("BOCQ").pay("ICBC", "CNY", huge),
        )
        after = self.bank("SCB").balance("THB")
        self.console.print(
            f"    SCB THB before {self.show(before.available, 'THB')}, after {self.show(after.available, 'THB')}"
        )
        self.console.rule("a retried instruction settles once")
        amount = self.minor(25_000, "HKD")
        first = self.bank("BOCHK").pay("HSBCHK", "HKD", amount, instruction_id="demo-retry-1")
        again = self.bank("BOCHK").pay("HSBCHK", "HKD", amount, instruction_id="demo-retry-1")
        self.record(
            Row(
                "retry",
                "BOCHK -> HSBCHK",
                self.show(amount, "HKD"),
                again.outcome.value,
                str(again.seq),
                note=f"duplicate={again.duplicate}, same seq as first: {again.seq == first.seq}",
            )
        )

    def settlement_table(self) -> None:
        table = Table(title="settlements")
        for column in ("step", "parties", "legs", "outcome", "seq", "note"):
            table.add_column(column)
        for row in self.rows:
            table.add_row(row.step, row.parties, row.legs, row.outcome, row.seq, row.note)
        self.console.print(table)

    def verify(self) -> bool:
        from bridge.log.source import open_source
        from bridge.log.verify import verify_log

        self.console.rule("finality and offline verification of the log")
        self.wait_final()
        with open_source(str(self.network.config.bridge_db)) as source:
            report = verify_log(source, check=SignatureCheck.ALL)
        if report.ok:
            self.console.print(
                f"[green]log verified[/green]: {report.blocks} blocks, {report.entries} entries, "
                f"final height {report.final_height}, conservation holds for every currency"
            )
        else:
            self.console.print(f"[red]log verification failed[/red]: {report.first_failure}")
        return bool(report.ok)

    def wait_final(self, timeout: float = 20.0) -> None:
        client = self.bank("ICBC")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            finality = client.finality()
            if finality.final_height >= finality.sealed_height:
                self.console.print(
                    f"final height {finality.final_height} of {finality.sealed_height} sealed"
                )
                return
            time.sleep(0.2)
        raise TimeoutError("blocks did not become final (is every central bank node attesting?)")

    def load(self, seconds: int) -> bool:
        from loadtest.runner import run_scenario

        self.console.rule(f"short load: Locust 'steady' scenario for {seconds} s")
        result = run_scenario("steady", self.network, seconds=seconds, users=20)
        self.console.print(result.summary())
        return bool(result.ok)


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
