"""A researcher's report on a settlement log: HTML page, PNG charts and a Markdown summary.

`build_report(source, directory)` streams the log once through `Derivation` (the same rows the
export writes) and keeps only aggregates whose size does not grow with the log: time series in
`Buckets` that double their width when they get too many, latencies in a compact array of
integers, per-corridor and per-pair totals. Charts are drawn with matplotlib's Agg backend.

What the charts measure:
- settlements per second: entries that moved funds between banks (pay, pvp_dual, pvp_accept);
- settlement latency: the settling entry's time minus the `signed_at` its sender signed into
  the body (legs.latency_ms), per corridor (of the first leg) and kind, as p50 / p95 / p99; an
  accepted PvP counts from the acceptance's signature. Kept as counts per millisecond value,
  so the size follows the spread of latencies, not the length of the log;
- propose-to-accept wait: how long two-phase PvPs waited for their counterparty (accept entry
  time minus proposal entry time), a business decision rather than settlement work;
- FX rates: implied rate of each settled PvP (major units of one currency per unit of the
  other, pair in alphabetical order), mean per time bucket with the min-max band;
- refusals: read from the source's `refusals` table (refused instructions, recorded beside the
  log but not in it); "no refusals recorded" otherwise.
"""

from __future__ import annotations

import html
import itertools
import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
from matplotlib.figure import Figure

from analysis.export import Derivation, ExportError, Progress
from bridge.amounts import format_major
from bridge.log.source import LogSource, SourceError
from bridge.log.source import node_refusals as node_refusal_rows
from bridge.log.tables import BALANCES, LEGS, REFUSALS, Row

MAX_BUCKETS = 720
TOP_BANKS = 5
TOP_PAIRS = 6
TOP_CORRIDORS = 12  # corridors drawn in the latency chart (the table lists them all)
LATENCY_QUANTILES = (0.5, 0.95, 0.99)
SETTLING_KINDS = frozenset({"pay", "pvp_dual", "pvp_accept"})
_LEG = {name: LEGS.index(name) for name in LEGS.names}
_BAL = {name: BALANCES.index(name) for name in BALANCES.names}


class Buckets:
    """Time-bucketed aggregates that stay under `limit` buckets by doubling the bucket width."""

    def __init__(self, merge: Callable[[Any, Any], Any], width_ms: int = 1_000) -> None:
        self.width = width_ms
        self.merge = merge
        self.data: dict[int, Any] = {}

    def add(self, time_ms: int, value: Any) -> None:
        key = time_ms - time_ms % self.width
        old = self.data.get(key)
        self.data[key] = value if old is None else self.merge(old, value)
        if len(self.data) > MAX_BUCKETS:
            self._coarsen()

    def _coarsen(self) -> None:
        self.width *= 2
        merged: dict[int, Any] = {}
        for key, value in sorted(self.data.items()):
            new_key = key - key % self.width
            old = merged.get(new_key)
            merged[new_key] = value if old is None else self.merge(old, value)
        self.data = merged

    def items(self) -> list[tuple[int, Any]]:
        return sorted(self.data.items())


def _sum(a: int, b: int) -> int:
    return a + b


def _last(a: Any, b: Any) -> Any:
    return b


def _stats(a: tuple[float, float, float, int], b: tuple[float, float, float, int]) -> Any:
    return (a[0] + b[0], min(a[1], b[1]), max(a[2], b[2]), a[3] + b[3])


@dataclass(slots=True)
class Aggregates:
    """Everything the report shows, bounded in size."""

    entries: int = 0
    blocks: int = 0
    final_blocks: int = 0
    first_ms: int | None = None
    last_ms: int = 0
    kinds: Counter[tuple[str, str]] = field(default_factory=Counter)
    settlements: Buckets = field(default_factory=lambda: Buckets(_sum))
    latencies: array[int] = field(default_factory=lambda: array("q"))  # propose-to-accept
    # (corridor, kind) -> settlement latency in ms -> settlements
    settlement_latency: dict[tuple[str, str], Counter[int]] = field(default_factory=dict)
    corridor_legs: Counter[str] = field(default_factory=Counter)
    corridor_value: Counter[tuple[str, str]] = field(default_factory=Counter)
    currency_value: Counter[str] = field(default_factory=Counter)
    exponents: dict[str, int] = field(default_factory=dict)
    fx: dict[str, Buckets] = field(default_factory=dict)
    fx_trades: Counter[str] = field(default_factory=Counter)
    # per pair (a, b) sorted: total major units of a and of b that settled against each other
    pair_volume: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    bank_legs: Counter[str] = field(default_factory=Counter)
    balances: dict[tuple[str, str], Buckets] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)

    def add_leg(self, row: Row) -> None:
        kind, currency = str(row[_LEG["kind"]]), str(row[_LEG["currency"]])
        amount = int(row[_LEG["amount"]] or 0)
        if kind not in SETTLING_KINDS:
            return
        corridor = str(row[_LEG["corridor"]])
        self.corridor_legs[corridor] += 1
        self.corridor_value[(corridor, currency)] += amount
        self.currency_value[currency] += amount
        self.bank_legs[str(row[_LEG["payer"]])] += 1
        self.bank_legs[str(row[_LEG["payee"]])] += 1
        if row[_LEG["leg"]] != 1:
            return
        counts = self.settlement_latency.get((corridor, kind))
        if counts is None:
            counts = self.settlement_latency[(corridor, kind)] = Counter()
        counts[int(row[_LEG["latency_ms"]] or 0)] += 1
        if kind == "pvp_accept":
            self.latencies.append(int(row[_LEG["propose_to_accept_ms"]] or 0))

    def latency_by(self, key: Callable[[str, str], str]) -> dict[str, Counter[int]]:
        """Settlement latency counts merged by `key(corridor, kind)`."""
        merged: dict[str, Counter[int]] = {}
        for (corridor, kind), counts in self.settlement_latency.items():
            merged.setdefault(key(corridor, kind), Counter()).update(counts)
        return merged

    def latency_table(self) -> list[tuple[str, str, int, list[int]]]:
        """(corridor, kind, settlements, [p50, p95, p99, max]) per corridor and kind, then
        per kind over every corridor ("all"), then over everything ("all", "all")."""
        rows = []
        for (corridor, kind), counts in sorted(self.settlement_latency.items()):
            rows.append((corridor, kind, counts.total(), latency_quantiles(counts)))
        for kind, counts in sorted(self.latency_by(lambda _, kind: kind).items()):
            rows.append(("all", kind, counts.total(), latency_quantiles(counts)))
        everything = self.latency_by(lambda _, __: "all").get("all")
        if everything:
            rows.append(("all", "all", everything.total(), latency_quantiles(everything)))
        return rows

    def add_pvp(self, legs: tuple[Row, ...]) -> None:
        """Implied rate of one settled PvP from its two legs."""
        if len(legs) != 2:
            return
        (a_code, a_amount), (b_code, b_amount) = sorted(
            (str(leg[_LEG["currency"]]), self._major(leg)) for leg in legs
        )
        if a_amount <= 0:
            return
        pair = f"{a_code}/{b_code}"
        rate = b_amount / a_amount
        total_a, total_b = self.pair_volume.get((a_code, b_code), (0.0, 0.0))
        self.pair_volume[(a_code, b_code)] = (total_a + a_amount, total_b + b_amount)
        series = self.fx.get(pair)
        if series is None:
            series = self.fx[pair] = Buckets(_stats)
        series.add(int(legs[0][_LEG["time_ms"]] or 0), (rate, rate, rate, 1))
        self.fx_trades[pair] += 1

    def _major(self, leg: Row) -> float:
        exponent = int(leg[_LEG["exponent"]] or 0)
        return int(leg[_LEG["amount"]] or 0) / float(10**exponent)

    def valuation(self) -> tuple[str, dict[str, float]]:
        """A base currency and, per currency, base units per major unit: the log's own
        volume-weighted PvP rates, directly against the base or through one other currency.
        Currencies never traded towards the base are left out."""
        base = "CNY" if "CNY" in self.exponents else next(iter(sorted(self.exponents)), "")
        rates: dict[tuple[str, str], float] = {}
        for (a, b), (total_a, total_b) in self.pair_volume.items():
            if total_a > 0 and total_b > 0:
                rates[(a, b)], rates[(b, a)] = total_b / total_a, total_a / total_b
        values = {base: 1.0}
        for currency in self.exponents:
            if currency in values:
                continue
            if (currency, base) in rates:
                values[currency] = rates[(currency, base)]
                continue
            via = [
                rates[(currency, other)] * rates[(other, base)]
                for other in sorted(self.exponents)
                if (currency, other) in rates and (other, base) in rates
            ]
            if via:
                values[currency] = via[0]
        return base, values

    def corridor_values(self) -> tuple[str, Counter[str]]:
        """Settled value per corridor in the base currency (see `valuation`)."""
        base, values = self.valuation()
        totals: Counter[str] = Counter()
        for (corridor, currency), amount in self.corridor_value.items():
            rate = values.get(currency)
            if rate is not None:
                exponent = self.exponents.get(currency, 0)
                totals[corridor] += amount / 10**exponent * rate
        return base, totals

    def add_balance(self, row: Row) -> None:
        account = (str(row[_BAL["participant"]]), str(row[_BAL["currency"]]))
        series = self.balances.get(account)
        if series is None:
            series = self.balances[account] = Buckets(_last)
        series.add(int(row[_BAL["time_ms"]] or 0), int(row[_BAL["available"]] or 0))


def aggregate(
    source: LogSource, on_progress: Progress | None = None, node_refusals: Sequence[Path] = ()
) -> Aggregates:
    """Stream the log once and keep the report's aggregates; the refusals counted are the
    source's and those in the `node_refusals` files of central bank nodes."""
    try:
        genesis = source.genesis()
        node_rows = [node_refusal_rows(path, genesis) for path in node_refusals]
    except SourceError as exc:
        raise ExportError(str(exc)) from exc
    derivation = Derivation(source)
    result = Aggregates(
        exponents={b.currency: b.exponent for b in derivation.genesis.central_banks}
    )
    since_forget = 0
    for block in derivation.blocks(on_progress):
        result.blocks += 1
        result.final_blocks += 1 if block.row[-1] else 0
        for entry, rows in block.entries:
            result.entries += 1
            if result.first_ms is None:
                result.first_ms = entry.time
            result.last_ms = max(result.last_ms, entry.time)
            kind = entry.envelope.body.KIND
            result.kinds[(kind, entry.outcome.value)] += 1
            if kind in SETTLING_KINDS:
                result.settlements.add(entry.time, 1)
            for leg in rows.legs:
                result.add_leg(leg)
            if rows.legs and rows.legs[0][_LEG["rate"]] is not None:
                result.add_pvp(rows.legs)
            for row in rows.balances:
                result.add_balance(row)
        since_forget += len(block.entries)
        if since_forget >= 50_000:
            derivation.forget_closed()
            since_forget = 0
    reason_at = REFUSALS.index("reason")
    for row in itertools.chain(source.refusals(), *node_rows):
        result.refusals[str(row[reason_at])] += 1
    return result


# ---------------------------------------------------------------------------- charts


def _times(keys: Iterable[int]) -> np.ndarray[Any, np.dtype[np.datetime64]]:
    return np.array(list(keys), dtype="datetime64[ms]")


def _figure(height: float = 3.6) -> Figure:
    figure = plt.figure(figsize=(9.6, height), dpi=100)
    return figure


def _empty(figure: Figure, message: str) -> None:
    axes = figure.add_subplot()
    axes.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="#555555")
    axes.set_axis_off()


def _time_axis(axes: Any, label: bool = True) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_formatter(formatter)
    if label:
        axes.set_xlabel("time (UTC)")


def chart_throughput(data: Aggregates) -> Figure:
    figure = _figure()
    items = data.settlements.items()
    if not items:
        _empty(figure, "no settlements in the log")
        return figure
    axes = figure.add_subplot()
    width_s = data.settlements.width / 1000
    axes.step(_times(k for k, _ in items), [v / width_s for _, v in items], where="post")
    axes.set_ylabel("settlements per second")
    axes.set_title(f"Settlements per second (bucket {width_s:g} s)")
    axes.grid(alpha=0.3)
    _time_axis(axes)
    figure.tight_layout()
    return figure


def chart_latency(data: Aggregates) -> Figure:
    """Settlement latency per corridor (the busiest, by settlements) in one panel per kind:
    a bar to p50, markers at p95 and p99."""
    by_corridor = data.latency_by(lambda corridor, _: corridor)
    corridors = sorted(by_corridor, key=lambda c: -by_corridor[c].total())[:TOP_CORRIDORS]
    corridors.reverse()  # busiest on top
    kinds = sorted({kind for _, kind in data.settlement_latency})
    figure = _figure(max(3.0, 0.3 * len(corridors) + 1.6))
    if not kinds:
        _empty(figure, "no settlements in the log")
        return figure
    shared = None
    for number, kind in enumerate(kinds, start=1):
        axes = figure.add_subplot(1, len(kinds), number, sharey=shared)
        shared = shared or axes
        present = [c for c in corridors if (c, kind) in data.settlement_latency]
        quantiles = [latency_quantiles(data.settlement_latency[(c, kind)]) for c in present]
        axes.barh(present, [q[0] for q in quantiles], color="#4477aa", label="p50")
        axes.scatter([q[1] for q in quantiles], present, marker="|", s=120, color="#ee7733",
                     label="p95", zorder=3)  # fmt: skip
        axes.scatter([q[2] for q in quantiles], present, marker="x", color="#cc3311",
                     label="p99", zorder=3)  # fmt: skip
        axes.set_title(kind, fontsize=9)
        axes.set_xlabel("ms, signed to settled", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(axis="x", alpha=0.3)
    if shared is not None:
        shared.legend(fontsize=7, loc="lower right")
    figure.suptitle("Settlement latency per corridor and kind (p50 bar, p95 and p99 marks)")
    figure.tight_layout()
    return figure


def chart_accept_wait(data: Aggregates) -> Figure:
    figure = _figure()
    values = sorted(data.latencies)
    if not values:
        _empty(figure, "no propose/accept PvPs in the log")
        return figure
    axes = figure.add_subplot()
    axes.hist(values, bins=min(60, max(5, len(set(values)))), color="#4477aa")
    for q, style in ((0.5, "--"), (0.99, ":")):
        value = _quantile(values, q)
        axes.axvline(value, color="#cc3311", linestyle=style, label=f"p{int(q * 100)} {value} ms")
    axes.set_xlabel("proposal to acceptance (ms)")
    axes.set_ylabel("PvPs")
    axes.set_title(f"Propose-to-accept wait of two-phase PvPs (n={len(values)})")
    axes.legend()
    figure.tight_layout()
    return figure


def chart_corridors(data: Aggregates) -> Figure:
    """Settled value per corridor, in the base currency at the log's own PvP rates; the
    number of legs is written beside each bar."""
    base, totals = data.corridor_values()
    top = totals.most_common(20)
    figure = _figure(max(3.0, 0.28 * len(top) + 1.2))
    if not top:
        _empty(figure, "no settled legs in the log")
        return figure
    axes = figure.add_subplot()
    names = [name for name, _ in reversed(top)]
    millions = [value / 1e6 for _, value in reversed(top)]
    bars = axes.barh(names, millions, color="#228833")
    for bar, name in zip(bars, names, strict=True):
        axes.annotate(
            f" {data.corridor_legs[name]:,} legs",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=7,
        )
    axes.set_xlabel(f"settled value, millions of {base} (at the log's volume-weighted PvP rates)")
    axes.set_title("Value settled per corridor (payer jurisdiction - payee jurisdiction)")
    figure.tight_layout()
    return figure


def chart_fx(data: Aggregates) -> Figure:
    pairs = [pair for pair, _ in data.fx_trades.most_common(TOP_PAIRS)]
    rows = max(1, math.ceil(len(pairs) / 2))
    figure = _figure(2.4 * rows + 0.6)
    if not pairs:
        _empty(figure, "no settled PvPs in the log")
        return figure
    for number, pair in enumerate(pairs, start=1):
        axes = figure.add_subplot(rows, 2, number)
        items = data.fx[pair].items()
        times = _times(k for k, _ in items)
        axes.plot(times, [s / n for _, (s, _, _, n) in items], linewidth=1.2)
        axes.fill_between(
            times,
            [lo for _, (_, lo, _, _) in items],
            [hi for _, (_, _, hi, _) in items],
            alpha=0.25,
        )
        base, quote = pair.split("/")
        axes.set_title(f"{pair}: {quote} per {base} ({data.fx_trades[pair]} PvPs)", fontsize=9)
        axes.tick_params(labelsize=7)
        _time_axis(axes, label=False)
    figure.suptitle("Implied FX rates of settled PvPs (mean and min-max per bucket)")
    figure.tight_layout()
    return figure


def busiest_banks(data: Aggregates) -> list[str]:
    return [bank for bank, _ in data.bank_legs.most_common(TOP_BANKS)]


def chart_liquidity(data: Aggregates) -> Figure:
    banks = busiest_banks(data)
    figure = _figure(2.1 * max(1, len(banks)) + 0.6)
    if not banks:
        _empty(figure, "no bank balances in the log")
        return figure
    for number, bank in enumerate(banks, start=1):
        axes = figure.add_subplot(len(banks), 1, number)
        for (owner, currency), series in sorted(data.balances.items()):
            if owner != bank:
                continue
            items = series.items()
            scale = 10 ** data.exponents.get(currency, 0)
            values = [v / scale if v > 0 else math.nan for _, v in items]
            axes.step(_times(k for k, _ in items), values, where="post", label=currency)
        axes.set_yscale("log")
        axes.yaxis.set_major_locator(mticker.LogLocator(base=10, numticks=4))
        axes.yaxis.set_minor_locator(mticker.NullLocator())
        axes.set_ylabel(bank, fontsize=8)
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=7, loc="lower right", ncol=6)
        _time_axis(axes, label=number == len(banks))
    figure.suptitle("Available balances of the busiest banks (major units, log scale)")
    figure.tight_layout()
    return figure


def chart_refusals(data: Aggregates) -> Figure:
    figure = _figure(3.0)
    if not data.refusals:
        _empty(figure, "no refusals recorded")
        return figure
    axes = figure.add_subplot()
    items = data.refusals.most_common()
    axes.barh([r for r, _ in reversed(items)], [n for _, n in reversed(items)], color="#ee7733")
    axes.set_xlabel("refused instructions")
    axes.set_title("Refusals by reason")
    figure.tight_layout()
    return figure


CHARTS: tuple[tuple[str, str, Callable[[Aggregates], Figure]], ...] = (
    ("throughput.png", "Settlements per second over time", chart_throughput),
    ("latency.png", "Settlement latency per corridor and kind", chart_latency),
    ("accept-wait.png", "Propose-to-accept wait of two-phase PvPs", chart_accept_wait),
    ("corridors.png", "Value per corridor", chart_corridors),
    ("fx.png", "FX rates per pair", chart_fx),
    ("liquidity.png", "Liquidity of the busiest banks", chart_liquidity),
    ("refusals.png", "Refusals by reason", chart_refusals),
)


# ---------------------------------------------------------------------------- text


def _quantile(values: list[int], q: float) -> int:
    return values[min(len(values) - 1, int(q * len(values)))]


def latency_quantiles(counts: Counter[int]) -> list[int]:
    """p50, p95, p99 and max of values given as counts, by the rule of `_quantile`: the value
    at rank min(n - 1, floor(q n)) in ascending order."""
    total = counts.total()
    ranks = [min(total - 1, int(q * total)) for q in LATENCY_QUANTILES]
    out: list[int] = []
    seen = 0
    values = sorted(counts)
    for value in values:
        seen += counts[value]
        while len(out) < len(ranks) and ranks[len(out)] < seen:
            out.append(value)
    return [*out, values[-1]]


def figures(data: Aggregates) -> list[tuple[str, str]]:
    """The key figures, as (label, value) pairs."""
    span_s = 0.0 if data.first_ms is None else (data.last_ms - data.first_ms) / 1000
    settled = sum(v for _, v in data.settlements.items())
    peak = max((v for _, v in data.settlements.items()), default=0)
    width_s = data.settlements.width / 1000
    latencies = sorted(data.latencies)
    pvp_outcomes = {o: n for (k, o), n in data.kinds.items() if k == "pvp_propose"}
    closed = Counter(
        {
            o: n
            for (k, o), n in data.kinds.items()
            if k.startswith("pvp_") and k not in ("pvp_propose", "pvp_dual")
        }
    )
    rows = [
        ("entries", f"{data.entries:,}"),
        ("blocks (final)", f"{data.blocks:,} ({data.final_blocks:,} final)"),
        ("logical time span", f"{span_s:,.1f} s"),
        ("settlements (pay, PvP)", f"{settled:,}"),
        ("mean settlements per second", f"{settled / span_s:,.1f}" if span_s else "-"),
        (f"peak settlements per second ({width_s:g} s bucket)", f"{peak / width_s:,.1f}"),
        ("payments", f"{data.kinds[('pay', 'SETTLED')]:,}"),
        ("dual-signed PvPs settled", f"{data.kinds[('pvp_dual', 'SETTLED')]:,}"),
        ("PvPs proposed", f"{sum(pvp_outcomes.values()):,}"),
        (
            "PvP proposals accepted / rejected / cancelled / expired",
            " / ".join(f"{closed[o]:,}" for o in ("SETTLED", "REJECTED", "CANCELLED", "EXPIRED")),
        ),
    ]
    everything = data.latency_by(lambda _, __: "all").get("all")
    if everything:
        quantiles = latency_quantiles(everything)
        rows.append(
            (
                "settlement latency p50 / p95 / p99 / max (signed to settled)",
                " / ".join(f"{value:,} ms" for value in quantiles),
            )
        )
    if latencies:
        rows.append(
            (
                "propose-to-accept wait p50 / p90 / p99 / max",
                " / ".join(f"{_quantile(latencies, q):,} ms" for q in (0.5, 0.9, 0.99))
                + f" / {latencies[-1]:,} ms",
            )
        )
    for currency, value in sorted(data.currency_value.items()):
        exponent = data.exponents.get(currency, 0)
        rows.append((f"volume settled in {currency}", format_major(value, exponent)))
    rows.append(
        ("refusals recorded", f"{sum(data.refusals.values()):,}" if data.refusals else "none")
    )
    return rows


def _top_corridors(data: Aggregates) -> str:
    base, totals = data.corridor_values()
    return (
        "Top corridors (settled value, "
        + base
        + " equivalent; legs): "
        + ", ".join(
            f"{c} ({v / 1e6:,.1f}m; {data.corridor_legs[c]:,})" for c, v in totals.most_common(5)
        )
    )


def summary_markdown(data: Aggregates, source: str) -> str:
    lines = [
        "# Settlement log report",
        "",
        f"Source: `{source}`",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in figures(data)),
        "",
        "Busiest banks (legs as payer or payee): "
        + ", ".join(f"{b} ({data.bank_legs[b]:,})" for b in busiest_banks(data)),
        "",
        _top_corridors(data),
        "",
        "Charts: " + ", ".join(f"[{title}]({name})" for name, title, _ in CHARTS),
        "",
        "## Settlement latency",
        "",
        LATENCY_NOTE,
        "",
        "| corridor | kind | settlements | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {corridor} | {kind} | {n:,} | " + " | ".join(f"{v:,}" for v in quantiles) + " |"
            for corridor, kind, n, quantiles in data.latency_table()
        ),
        "",
        "Refused instructions are not in the log; refusals come from the store's `refusals`",
        "table (the newest 100,000) and from the central bank nodes' refusals files given with",
        "`--node-refusals` (what each node refused before forwarding).",
        "",
    ]
    return "\n".join(lines)


LATENCY_NOTE = (
    "Settlement latency is an entry's time in the log minus the `signed_at` its sender signed "
    "into the instruction (from the sender's clock): from signature to settlement. A PvP "
    "settled by propose and accept counts from the acceptance's signature; the wait for the "
    "counterparty is shown apart (propose-to-accept). Corridor: the first leg's payer and "
    "payee jurisdictions; quantiles by nearest rank."
)


def latency_table_html(data: Aggregates) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(corridor)}</td><td>{html.escape(kind)}</td>"
        f'<td class="n">{n:,}</td>'
        + "".join(f'<td class="n">{value:,}</td>' for value in quantiles)
        + "</tr>"
        for corridor, kind, n, quantiles in data.latency_table()
    )
    return (
        '<table class="latency">\n<caption>Settlement latency (ms) per corridor and kind'
        "</caption>\n<tr><th>corridor</th><th>kind</th><th>settlements</th><th>p50</th>"
        f"<th>p95</th><th>p99</th><th>max</th></tr>\n{rows}\n</table>"
    )


# a chart that fails to load is reported on the browser console (the render test watches it)
_MISSING_CHART = "console.error('chart failed to load: ' + this.src)"


def report_html(data: Aggregates, source: str) -> str:
    rows = "\n".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        for label, value in figures(data)
    )
    charts = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}" onerror="{_MISSING_CHART}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for name, title, _ in CHARTS
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Settlement log report</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 1em; border-bottom: 1px solid #ddd; }}
th {{ font-weight: normal; color: #555; }}
figure {{ margin: 1.5em 0; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ color: #555; font-size: 0.9em; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
caption {{ text-align: left; color: #555; padding-bottom: 0.5em; }}
p.note {{ color: #555; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>Settlement log report</h1>
<p>Source: <code>{html.escape(source)}</code></p>
<table>
{rows}
</table>
<p class="note">Refused instructions are not in the log: refusal counts come from
the store's <code>refusals</code> table and the central bank nodes' refusals files given with
<code>--node-refusals</code>. Run <code>cbdc-bridge log verify</code> to
check the log itself.</p>
{charts}
<h2>Settlement latency</h2>
<p class="note">{html.escape(LATENCY_NOTE)}</p>
{latency_table_html(data)}
</body>
</html>
"""


@dataclass(frozen=True, slots=True)
class ReportFiles:
    html: Path
    summary: Path
    charts: tuple[Path, ...]


def build_report(
    source: LogSource,
    directory: Path,
    *,
    on_progress: Progress | None = None,
    node_refusals: Sequence[Path] = (),
) -> ReportFiles:
    """Write report.html, summary.md and the PNG charts of `source` into `directory` (with the
    refusals of the central bank nodes' `node_refusals` files beside the source's own)."""
    data = aggregate(source, on_progress, node_refusals)
    directory.mkdir(parents=True, exist_ok=True)
    charts = []
    for name, _, draw in CHARTS:
        figure = draw(data)
        path = directory / name
        figure.savefig(path)
        plt.close(figure)
        charts.append(path)
    html_path = directory / "report.html"
    html_path.write_text(report_html(data, source.description), encoding="utf-8")
    summary_path = directory / "summary.md"
    summary_path.write_text(summary_markdown(data, source.description), encoding="utf-8")
    return ReportFiles(html_path, summary_path, tuple(charts))
