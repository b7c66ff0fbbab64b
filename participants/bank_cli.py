"""`cbdc-bridge bank ...`: a commercial bank's desk on the command line, over the bank SDK.

Amounts are typed and shown in major units of their currency ("1,234.56 CNY"), converted
exactly with the currency's exponent from network.json; an amount with more decimals than the
currency has is refused. Exit codes:

    0  done
    1  refused: final, nothing changed (reason code and message printed); do not resend as is
    2  usage or configuration error (nothing was sent)
    3  not decided: the node was unavailable, shed the request, or the outcome is unknown;
       resubmit the same instruction id (the exact command to do so is printed: same id,
       validity and signing time, so the bridge recognises it and settles it at most once)
"""

from __future__ import annotations

import contextlib
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from bridge import rates
from bridge.crypto import PrivateKey, public_key_to_pem
from bridge.domain import BRIDGE_SENDER, Amount, CurrencyCode, Millis, ParticipantId
from bridge.errors import Reason
from participants.network_config import NetworkConfig
from participants.sdk import (
    AmountError,
    BankClient,
    BridgeRpcError,
    HistoryEntry,
    InstructionResult,
    PvpInfo,
    SettlementEvent,
    SettlementSubscriber,
    SignedDualPvp,
    format_minor,
    new_instruction_id,
    to_minor,
)

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_DECIDED = 3
EXIT_UNAVAILABLE = EXIT_NOT_DECIDED  # the name earlier versions used
VALIDITY_MS = 300_000  # an instruction not recorded within 5 minutes is refused

bank_app = typer.Typer(
    help="A commercial bank's desk: balances, payments, PvP FX trades, issuance, history.",
    no_args_is_help=True,
)
pvp_app = typer.Typer(
    help="Two-phase PvP: propose (our leg is held), the counterparty accepts or rejects.",
    no_args_is_help=True,
)
dual_app = typer.Typer(
    help="Dual-signed PvP: one bank signs its side to a file, the other adds its own and submits.",
    no_args_is_help=True,
)
bank_app.add_typer(pvp_app, name="pvp")
bank_app.add_typer(dual_app, name="dual")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

NETWORK = typer.Option(
    Path("demo-network"),
    "--network",
    "-n",
    envvar="CBDC_BRIDGE_NETWORK",
    help="Network directory (network.json, keys/, pki/).",
)
BANK = typer.Option(..., "--bank", "-b", envvar="CBDC_BRIDGE_BANK", help="Our bank id, e.g. ICBC.")
TIMEOUT = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait for each answer.")
INSTRUCTION_ID = typer.Option(None, "--id", help="Instruction id (default: a fresh one).")
VALID_UNTIL = typer.Option(
    None,
    "--valid-until",
    min=0,
    help="Unix ms after which the bridge refuses the instruction (default: now + 5 minutes); "
    "a resubmission repeats the first attempt's value.",
)
SIGNED_AT = typer.Option(
    None,
    "--signed-at",
    min=1,
    help="Unix ms the instruction is signed at, part of its signed body (default: now); a "
    "resubmission repeats the first attempt's value.",
)
REFERENCE = typer.Option("", "--reference", "-r", help="Free text, e.g. the trade document.")
WAIT_FINAL = typer.Option(
    False, "--wait-final", help="Also wait until the block holding it is final."
)
_MONEY = re.compile(r"^\s*(?P<amount>[0-9][0-9,_]*(\.[0-9]+)?)\s*(?P<currency>[A-Za-z]{3})\s*$")
_PARTY_FIELDS = ("sender", "payee", "counterparty", "proposer", "to")


# ---------------------------------------------------------------------------- the desk


@dataclass(slots=True)
class Desk:
    """One bank's session: the network it belongs to, its client, the instruction in flight."""

    config: NetworkConfig
    client: BankClient
    instruction_id: str | None = None
    resubmit: dict[str, object] | None = None  # parameters to repeat to resubmit it exactly
    context: typer.Context | None = None  # the command line, to print it for a resubmission

    def new_instruction(
        self,
        given: str | None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        **fixed: object,
    ) -> tuple[str, Millis, Millis]:
        """The id, validity and signing time of the instruction about to be sent; if its
        outcome is not decided, the command printed to resubmit it repeats all three (and
        `fixed` parameters), so the resubmission is the very same signed body."""
        self.instruction_id = given or new_instruction_id()
        now = _now_ms()
        until = valid_until if valid_until is not None else now + VALIDITY_MS
        signing_time = signed_at if signed_at is not None else now
        self.resubmit = {
            "instruction_id": self.instruction_id,
            "valid_until": until,
            "signed_at": signing_time,
            **fixed,
        }
        return self.instruction_id, until, signing_time

    @property
    def bank(self) -> ParticipantId:
        return self.client.bank_id

    def exponent(self, currency: CurrencyCode) -> int:
        for cb in self.config.central_banks:
            if cb.currency == currency:
                return cb.exponent
        fail(EXIT_USAGE, f"unknown currency {currency}: not issued by any central bank here")

    def home_currency(self) -> CurrencyCode:
        return self.config.home_of(self.bank).currency

    def minor(self, amount: str, currency: CurrencyCode) -> Amount:
        """Parse `amount` in major units of `currency`; usage error unless exact and positive."""
        try:
            minor = to_minor(amount, self.exponent(currency))
        except AmountError as error:
            fail(EXIT_USAGE, f"{currency} amount: {error}")
        if minor <= 0:
            fail(EXIT_USAGE, f"{currency} amount must be positive: got {amount}")
        return minor

    def money(self, text: str) -> tuple[CurrencyCode, Amount]:
        """Parse "1,000.50 CNY" into (currency, minor units)."""
        match = _MONEY.match(text)
        if match is None:
            fail(EXIT_USAGE, f"expected an amount and a currency, e.g. '1000.50 CNY': got {text!r}")
        currency = match["currency"].upper()
        return currency, self.minor(match["amount"], currency)

    def show(self, amount: Amount, currency: CurrencyCode) -> str:
        for cb in self.config.central_banks:
            if cb.currency == currency:
                return f"{format_minor(amount, cb.exponent)} {currency}"
        return f"{amount} {currency} (minor units)"


def fail(code: int, message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@contextlib.contextmanager
def open_desk(
    network: Path, bank: ParticipantId, timeout: float, context: typer.Context | None = None
) -> Iterator[Desk]:
    """The bank's desk; turns refusals and outages into their exit codes."""
    try:
        config = NetworkConfig.load(network)
        client = BankClient.from_network(network, bank, timeout=timeout)
    except FileNotFoundError as error:
        fail(EXIT_USAGE, f"cannot read the network in {network}: {error}")
    except KeyError as error:
        fail(EXIT_USAGE, str(error.args[0] if error.args else error))
    except (OSError, ValueError) as error:
        fail(EXIT_USAGE, f"cannot load the network or the key of {bank}: {error}")
    desk = Desk(config, client, context=context)
    try:
        yield desk
    except BridgeRpcError as error:
        report(error, desk)
    finally:
        client.close()


def report(error: BridgeRpcError, desk: Desk | None = None) -> NoReturn:
    """Print a failed call as what it is and exit: 1 refused (final), 3 not decided."""
    what = f"{error.reason.value} ({error.code.name}): {error.message}"
    if not error.retryable:
        err.print(f"[red]refused (final, nothing changed):[/red] {what}")
        raise typer.Exit(EXIT_REFUSED)
    err.print(f"[yellow]not decided:[/yellow] {what}")
    if desk is not None and desk.instruction_id and desk.resubmit is not None and desk.context:
        err.print(
            f"instruction {desk.instruction_id} may or may not have been recorded; nothing is "
            "final yet. Resubmit the same instruction id (it settles at most once):"
        )
        out.print(resubmit_command(desk.context, desk.resubmit), soft_wrap=True)
    else:
        err.print("nothing was decided: run the same command again")
    raise typer.Exit(EXIT_NOT_DECIDED)


def resubmit_command(context: typer.Context, overrides: dict[str, object]) -> str:
    """The running command line with `overrides` filled in, ready to run again."""
    names = []
    parent: Any = context
    while parent is not None and parent.parent is not None:
        names.append(parent.info_name or "")
        parent = parent.parent
    words = ["cbdc-bridge", *reversed(names)]
    for param in context.command.params:
        name = param.name or ""
        value = overrides.get(name, context.params.get(name))
        words.extend(_words(param, value))
    return shlex.join(words)


def _words(param: Any, value: object) -> list[str]:
    """A parameter's words on a command line (none when unset or at its default)."""
    if param.param_type_name == "argument":
        return [] if value is None else [str(value)]
    if value is None or value == param.default:
        return []
    option = max(param.opts, key=len)
    if param.is_flag:
        return [option] if value else []
    return [option, str(value)]


def describe(result: InstructionResult) -> str:
    where = f"seq {result.seq}"
    if result.block_height:
        where += f", block {result.block_height}" + (" (final)" if result.final else "")
    again = " — already recorded, nothing redone" if result.duplicate else ""
    return f"{result.outcome.value}: {result.sender}/{result.instruction_id} ({where}){again}"


def finish(desk: Desk, result: InstructionResult, wait_final: bool, timeout: float) -> None:
    if wait_final and not result.final:
        result = desk.client.wait_final(
            result.instruction_id, sender=result.sender, timeout=max(timeout, 30.0)
        )
    out.print(describe(result))


def when(millis: Millis) -> str:
    moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------------------- keys


@bank_app.command("keys")
def keys(
    path: Path = typer.Argument(..., help="Private key file to write (PKCS#8 PEM, mode 0600)."),
    show: bool = typer.Option(False, "--show", help="Only show the public key of PATH."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key."),
) -> None:
    """Generate a bank's P-256 key pair (PATH and PATH.pub.pem) and show its public key."""
    try:
        if show:
            key = PrivateKey.load(path)
        else:
            if path.exists() and not force:
                fail(EXIT_USAGE, f"{path} exists; use --force to replace it or --show to read it")
            key = PrivateKey.generate()
            key.save(path)
            out.print(f"wrote {path} and {path.with_suffix('.pub.pem')}")
    except (OSError, ValueError) as error:
        fail(EXIT_USAGE, f"{path}: {error}")
    out.print(f"public key (SEC1 hex): {key.public_key.hex()}")
    out.print(public_key_to_pem(key.public_key).decode().rstrip())


# ---------------------------------------------------------------------------- reads


@bank_app.command("balance")
def balance(
    currency: str = typer.Option("", "--currency", "-c", help="Only this currency."),
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Our accounts: available, held by open PvP proposals, and frozen flags."""
    with open_desk(network, bank, timeout) as desk:
        balances = desk.client.balances(currency.upper())
        table = Table(title=f"{desk.bank} balances")
        table.add_column("Currency")
        for column in ("Available", "Held", "Total"):
            table.add_column(column, justify="right")
        table.add_column("Frozen")
        for code, held in balances.items():
            table.add_row(
                code,
                desk.show(held.available, code),
                desk.show(held.held, code),
                desk.show(held.total, code),
                "yes" if held.frozen else "",
            )
        if not balances:
            out.print(f"{desk.bank} holds no accounts yet")
            return
        out.print(table)


@bank_app.command("status")
def status(
    instruction_id: str = typer.Argument(..., help="An instruction id."),
    sender: str | None = typer.Option(
        None, "--sender", help="Its sender if not us, e.g. PBOC for an issuance to us."
    ),
    wait_final: bool = WAIT_FINAL,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Where an instruction we are party to stands: outcome, log position, finality."""
    with open_desk(network, bank, timeout) as desk:
        finish(desk, desk.client.status(instruction_id, sender=sender), wait_final, timeout)


@bank_app.command("history")
def history(
    from_seq: int = typer.Option(1, "--from-seq", min=1, help="First sequence number."),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Most entries to show."),
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Settlement-log entries we are a party to, oldest first."""
    with open_desk(network, bank, timeout) as desk:
        entries = desk.client.history(from_seq, limit=limit)
        if not entries:
            out.print(f"no entries for {desk.bank} from seq {from_seq}")
            return
        table = history_table(f"{desk.bank} settlement history")
        for entry in entries:
            table.add_row(*history_row(desk, entry))
        out.print(table)
        out.print(f"next page: --from-seq {entries[-1].seq + 1}")


def history_table(title: str) -> Table:
    table = Table(title=title)
    table.add_column("Seq", justify="right")
    table.add_column("Time (UTC)")
    table.add_column("Block", justify="right")
    table.add_column("Kind")
    table.add_column("Outcome")
    table.add_column("Paid", justify="right")
    table.add_column("Received", justify="right")
    table.add_column("Counterparty")
    table.add_column("Reference", overflow="fold")
    return table


def history_row(desk: Desk, entry: HistoryEntry) -> tuple[str, ...]:
    paid = [leg for leg in entry.legs if leg.payer == desk.bank]
    received = [leg for leg in entry.legs if leg.payee == desk.bank]
    named = (getattr(entry.instruction, name, "") for name in _PARTY_FIELDS)
    legs = (party for leg in entry.legs for party in (leg.payer, leg.payee))
    others = {party for party in (*named, *legs) if party not in ("", desk.bank, BRIDGE_SENDER)}
    return (
        str(entry.seq),
        when(entry.time),
        str(entry.block_height or ""),
        entry.kind,
        entry.outcome.value,
        "\n".join(desk.show(leg.amount, leg.currency) for leg in paid),
        "\n".join(desk.show(leg.amount, leg.currency) for leg in received),
        ", ".join(sorted(others)),
        entry.reference,
    )


@bank_app.command("watch")
def watch(
    from_seq: int = typer.Option(
        0, "--from-seq", min=0, help="First sequence number (default: only new settlements)."
    ),
    count: int = typer.Option(0, "--count", min=0, help="Stop after this many (0: until Ctrl-C)."),
    mqtt: bool = typer.Option(
        False,
        "--mqtt",
        help="Notifications from the network's MQTT broker (gaps filled from the gRPC stream).",
    ),
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Stream our settlements as they are recorded, until Ctrl-C or --count entries."""
    with open_desk(network, bank, timeout) as desk:
        start = from_seq or next_seq(desk, timeout)
        source = "MQTT" if mqtt else "the gRPC stream"
        err.print(f"watching {desk.bank} from seq {start} over {source} (Ctrl-C to stop)")
        entries = watch_mqtt(desk, start) if mqtt else desk.client.watch(start)
        seen = 0
        with contextlib.suppress(KeyboardInterrupt):
            for entry in entries:
                if isinstance(entry, HistoryEntry):
                    out.print(watch_line(desk, entry))
                else:
                    out.print(event_line(desk, entry))
                seen += 1
                if count and seen >= count:
                    break


def watch_mqtt(desk: Desk, start: int) -> Iterator[HistoryEntry | SettlementEvent]:
    """Our notifications over MQTT from seq `start` on, gaps filled from the gRPC stream."""
    settings = desk.config.mqtt_settings(desk.bank)
    if settings is None:
        fail(EXIT_USAGE, f"the network in {desk.config.directory} runs no MQTT broker")
    home = desk.config.home_of(desk.bank).id
    yield from SettlementSubscriber(
        settings, central_bank=home, bank=desk.bank, from_seq=start, gaps=desk.client.watch
    )


def watch_line(desk: Desk, entry: HistoryEntry) -> str:
    moved = [
        ("-" if leg.payer == desk.bank else "+") + desk.show(leg.amount, leg.currency)
        for leg in entry.legs
        if desk.bank in (leg.payer, leg.payee)
    ]
    _, at, _, kind, outcome, _, _, others, reference = history_row(desk, entry)
    line = f"{entry.seq:>6} {at} {kind:<12} {outcome:<9} {' '.join(moved)} {others} {reference}"
    return line.rstrip()


def event_line(desk: Desk, event: SettlementEvent) -> str:
    """A notification as `watch_line` shows an entry; `(gRPC)` if it filled a gap."""
    moved = [
        ("-" if leg.payer == desk.bank else "+") + desk.show(leg.amount, leg.currency)
        for leg in event.legs
        if desk.bank in (leg.payer, leg.payee)
    ]
    parties = {event.sender, *(p for leg in event.legs for p in (leg.payer, leg.payee))}
    others = ", ".join(sorted(parties - {"", desk.bank, BRIDGE_SENDER}))
    source = " (gRPC)" if event.source == "grpc" else ""
    line = (
        f"{event.seq:>6} {when(event.time)} {event.kind:<12} {event.outcome:<9} "
        f"{' '.join(moved)} {others} {event.reference}{source}"
    )
    return line.rstrip()


def next_seq(desk: Desk, timeout: float) -> int:
    """One past our latest entry: where a watch of new settlements starts."""
    seq = 1
    while page := desk.client.history(seq, limit=500, timeout=timeout):
        seq = page[-1].seq + 1
    return seq


# ---------------------------------------------------------------------------- payments


@bank_app.command("pay")
def pay(
    context: typer.Context,
    payee: str = typer.Argument(..., help="Bank paid, e.g. BOCQ."),
    amount: str = typer.Argument(..., help="Amount in major units, e.g. 1234.56."),
    currency: str = typer.Argument(..., help="Currency, e.g. CNY."),
    reference: str = REFERENCE,
    instruction_id: str | None = INSTRUCTION_ID,
    valid_until: int | None = VALID_UNTIL,
    signed_at: int | None = SIGNED_AT,
    wait_final: bool = WAIT_FINAL,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Pay another bank; settles at once or is refused."""
    with open_desk(network, bank, timeout, context) as desk:
        code = currency.upper()
        minor = desk.minor(amount, code)
        iid, until, signing_time = desk.new_instruction(instruction_id, valid_until, signed_at)
        result = desk.client.pay(
            payee, code, minor, reference, iid, valid_until=until, signed_at=signing_time
        )
        out.print(f"{desk.bank} paid {desk.show(minor, code)} to {payee}")
        finish(desk, result, wait_final, timeout)


@bank_app.command("issue-request")
def issue_request(
    context: typer.Context,
    amount: str = typer.Argument(..., help="Amount of our central bank's currency."),
    request_id: str | None = typer.Option(None, "--id", help="Request id, to retry safely."),
    valid_until: int | None = VALID_UNTIL,
    signed_at: int | None = SIGNED_AT,
    wait_final: bool = WAIT_FINAL,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Ask our central bank to issue its currency to us against reserves at home."""
    with open_desk(network, bank, timeout, context) as desk:
        currency = desk.home_currency()
        minor = desk.minor(amount, currency)
        rid, until, signing_time = desk.new_instruction(request_id, valid_until, signed_at)
        desk.resubmit = {"request_id": rid, "valid_until": until, "signed_at": signing_time}
        result = desk.client.request_issuance(
            minor, request_id=rid, valid_until=until, signed_at=signing_time
        )
        out.print(f"{result.sender} issued {desk.show(minor, currency)} to {desk.bank}")
        finish(desk, result, wait_final, timeout)


@bank_app.command("redeem")
def redeem(
    context: typer.Context,
    amount: str = typer.Argument(..., help="Amount in major units."),
    currency: str = typer.Argument(..., help="Currency to return to its issuer."),
    instruction_id: str | None = INSTRUCTION_ID,
    valid_until: int | None = VALID_UNTIL,
    signed_at: int | None = SIGNED_AT,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Return currency to its issuing central bank, which destroys it."""
    with open_desk(network, bank, timeout, context) as desk:
        code = currency.upper()
        minor = desk.minor(amount, code)
        iid, until, signing_time = desk.new_instruction(instruction_id, valid_until, signed_at)
        result = desk.client.redeem(
            code, minor, instruction_id=iid, valid_until=until, signed_at=signing_time
        )
        out.print(f"{desk.bank} redeemed {desk.show(minor, code)}")
        out.print(describe(result))


# ---------------------------------------------------------------------------- two-phase PvP

PAY_LEG = typer.Option(..., "--pay", help="What we pay, e.g. '1000 CNY'.")
RECEIVE_LEG = typer.Option(..., "--receive", help="What we receive, e.g. '1,085.20 HKD'.")
RATE = typer.Option(
    None,
    "--rate",
    help="Agreed rate from our side: received per unit paid, major units; must agree with "
    "both amounts (default: the shortest rate that does).",
)


def implied_rate(desk: Desk, pay: tuple[str, int], receive: tuple[str, int]) -> str:
    """Received per unit paid, in major units: the shortest rate that agrees with both legs."""
    try:
        return rates.implied_rate(
            pay[1], desk.exponent(pay[0]), receive[1], desk.exponent(receive[0])
        )
    except ValueError as error:
        fail(EXIT_USAGE, f"cannot state a rate for these amounts ({error}); give --rate")


def checked_rate(desk: Desk, pay: tuple[str, int], receive: tuple[str, int], rate: str) -> str:
    """`rate` as given, once it agrees with both legs (the bridge refuses one that does not)."""
    if not re.fullmatch(r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,18})?", rate) or not rate.strip("0."):
        fail(EXIT_USAGE, f"--rate: a positive decimal such as 1.0870, got {rate!r}")
    mismatch = rates.rate_mismatch(
        (pay[0], pay[1], desk.exponent(pay[0])),
        (receive[0], receive[1], desk.exponent(receive[0])),
        rate,
    )
    if mismatch is not None:
        fail(EXIT_REFUSED, f"{Reason.RATE_MISMATCH.value}: {mismatch}")
    return rate


@pvp_app.command("propose")
def pvp_propose(
    context: typer.Context,
    counterparty: str = typer.Argument(..., help="The bank on the other side."),
    pay_leg: str = PAY_LEG,
    receive_leg: str = RECEIVE_LEG,
    rate: str | None = RATE,
    settle_within: float = typer.Option(
        300.0, "--settle-within", min=0.001, help="Seconds the counterparty has to accept."
    ),
    settle_by: int | None = typer.Option(
        None,
        "--settle-by",
        min=0,
        help="Unix ms by which the counterparty must accept (instead of --settle-within); "
        "a resubmission repeats the first attempt's value.",
    ),
    reference: str = REFERENCE,
    instruction_id: str | None = INSTRUCTION_ID,
    valid_until: int | None = VALID_UNTIL,
    signed_at: int | None = SIGNED_AT,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Propose an FX trade; our leg is held until it is accepted, rejected or expires."""
    with open_desk(network, bank, timeout, context) as desk:
        pay_money, receive_money = desk.money(pay_leg), desk.money(receive_leg)
        deadline = settle_by if settle_by is not None else _now_ms() + int(settle_within * 1000)
        iid, until, signing_time = desk.new_instruction(
            instruction_id, valid_until, signed_at, settle_by=deadline
        )
        result = desk.client.propose_pvp(
            counterparty,
            pay=pay_money,
            receive=receive_money,
            rate=rate or implied_rate(desk, pay_money, receive_money),
            settle_by=deadline,
            reference=reference,
            instruction_id=iid,
            valid_until=until,
            signed_at=signing_time,
        )
        out.print(
            f"{desk.bank} proposes to pay {desk.show(pay_money[1], pay_money[0])} to "
            f"{counterparty} for {desk.show(receive_money[1], receive_money[0])}"
        )
        out.print(describe(result))
        out.print(f"PvP id: {result.instruction_id}")


@pvp_app.command("accept")
def pvp_accept(
    context: typer.Context,
    proposer: str = typer.Argument(..., help="The bank that proposed the PvP."),
    pvp_id: str = typer.Argument(..., help="The PvP id."),
    instruction_id: str | None = INSTRUCTION_ID,
    valid_until: int | None = VALID_UNTIL,
    signed_at: int | None = SIGNED_AT,
    wait_final: bool = WAIT_FINAL,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Accept a PvP proposed to us: shows its terms, signs them, both legs settle at once."""
    with open_desk(network, bank, timeout, context) as desk:
        info = desk.client.pvp(proposer, pvp_id)
        out.print(pvp_table(desk, info))
        iid, until, signing_time = desk.new_instruction(instruction_id, valid_until, signed_at)
        result = desk.client.accept_pvp(
            proposer,
            pvp_id,
            terms_hash=info.terms_hash,
            instruction_id=iid,
            valid_until=until,
            signed_at=signing_time,
        )
        finish(desk, result, wait_final, timeout)


@pvp_app.command("reject")
def pvp_reject(
    context: typer.Context,
    proposer: str = typer.Argument(..., help="The bank that proposed the PvP."),
    pvp_id: str = typer.Argument(..., help="The PvP id."),
    instruction_id: str | None = INSTRUCTION_ID,
    valid_until: int | None = VALID_UNTIL,
    signed_at: int | None = SIGNED_AT,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Decline a PvP proposed to us; the proposer's hold is released."""
    with open_desk(network, bank, timeout, context) as desk:
        iid, until, signing_time = desk.new_instruction(instruction_id, valid_until, signed_at)
        result = desk.client.reject_pvp(
            proposer, pvp_id, instruction_id=iid, valid_until=until, signed_at=signing_time
        )
        out.print(describe(result))


@pvp_app.command("cancel")
def pvp_cancel(
    context: typer.Context,
    pvp_id: str = typer.Argument(..., help="The id of a PvP we proposed."),
    instruction_id: str | None = INSTRUCTION_ID,
    valid_until: int | None = VALID_UNTIL,
    signed_at: int | None = SIGNED_AT,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Withdraw a PvP we proposed; our hold is released."""
    with open_desk(network, bank, timeout, context) as desk:
        iid, until, signing_time = desk.new_instruction(instruction_id, valid_until, signed_at)
        result = desk.client.cancel_pvp(
            pvp_id, instruction_id=iid, valid_until=until, signed_at=signing_time
        )
        out.print(describe(result))


@pvp_app.command("status")
def pvp_status(
    proposer: str = typer.Argument(..., help="The bank that proposed the PvP."),
    pvp_id: str = typer.Argument(..., help="The PvP id."),
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Show a PvP we proposed or were proposed: terms and state."""
    with open_desk(network, bank, timeout) as desk:
        out.print(pvp_table(desk, desk.client.pvp(proposer, pvp_id)))


def pvp_table(desk: Desk, info: PvpInfo) -> Table:
    table = Table(title=f"PvP {info.pvp_id}", show_header=False)
    table.add_column("Field", style="bold")
    table.add_column("Value", overflow="fold")
    rows = (
        ("Status", info.status.value + (f" (seq {info.closed_seq})" if info.closed_seq else "")),
        ("Proposer", info.proposer),
        ("Counterparty", info.counterparty),
        (f"{info.proposer} pays", desk.show(info.pay.amount, info.pay.currency)),
        (f"{info.counterparty} pays", desk.show(info.receive.amount, info.receive.currency)),
        ("Rate", info.rate),
        ("Signed at", when(info.proposal.signed_at)),
        ("Settle by", when(info.settle_by)),
        ("Reference", info.reference),
        ("Terms hash", info.terms_hash),
    )
    for name, value in rows:
        table.add_row(name, value)
    return table


# ---------------------------------------------------------------------------- dual-signed PvP


@dual_app.command("sign")
def dual_sign(
    counterparty: str = typer.Argument(..., help="The bank that will submit the trade."),
    pay_leg: str = PAY_LEG,
    receive_leg: str = RECEIVE_LEG,
    rate: str | None = RATE,
    reference: str = REFERENCE,
    instruction_id: str | None = INSTRUCTION_ID,
    valid_for: float = typer.Option(
        600.0, "--valid-for", min=1.0, help="Seconds the counterparty has to submit it."
    ),
    output: Path | None = typer.Option(
        None, "--out", "-o", help="File to write (default: dual-<id>.json)."
    ),
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Sign our side of a dual-signed PvP to a JSON file for the counterparty to submit."""
    with open_desk(network, bank, timeout) as desk:
        pay_money, receive_money = desk.money(pay_leg), desk.money(receive_leg)
        signed = desk.client.sign_dual_pvp(
            counterparty,
            pay=pay_money,
            receive=receive_money,
            rate=checked_rate(desk, pay_money, receive_money, rate)
            if rate
            else implied_rate(desk, pay_money, receive_money),
            reference=reference,
            instruction_id=instruction_id,
            valid_until=_now_ms() + int(valid_for * 1000),
        )
        path = output or Path(f"dual-{signed.body.instruction_id}.json")
        try:
            path.write_text(signed.to_json())
        except OSError as error:
            fail(EXIT_USAGE, f"cannot write {path}: {error}")
        out.print(dual_summary(desk, signed))
        out.print(f"wrote {path}: hand it to {counterparty} to run `cbdc-bridge bank dual submit`")


@dual_app.command("submit")
def dual_submit(
    context: typer.Context,
    path: Path = typer.Argument(..., help="A file written by `dual sign` by the counterparty."),
    wait_final: bool = WAIT_FINAL,
    network: Path = NETWORK,
    bank: str = BANK,
    timeout: float = TIMEOUT,
) -> None:
    """Add our signature to a dual-signed PvP and submit it: both legs settle or neither."""
    with open_desk(network, bank, timeout, context) as desk:
        try:
            signed = SignedDualPvp.from_json(path.read_text())
        except (OSError, ValueError) as error:
            fail(EXIT_USAGE, f"{path}: {error}")
        out.print(dual_summary(desk, signed))
        desk.instruction_id = signed.body.instruction_id
        desk.resubmit = {}  # the file fixes id, terms and validity
        finish(desk, desk.client.submit_dual_pvp(signed), wait_final, timeout)


def dual_summary(desk: Desk, signed: SignedDualPvp) -> str:
    body = signed.body
    return (
        f"dual PvP {body.instruction_id}: {body.sender} pays "
        f"{desk.show(body.pay_amount, body.pay_currency)}, {body.counterparty} pays "
        f"{desk.show(body.receive_amount, body.receive_currency)} "
        f"(rate {body.rate}, {body.sender}'s side); "
        f"signed by {signed.signer}, submitted by {signed.submitter}"
    )


def _now_ms() -> Millis:
    return time.time_ns() // 1_000_000
