"""The researcher's report: bounded aggregates, the seven charts, the HTML page and summary."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.report import (
    CHARTS,
    MAX_BUCKETS,
    Aggregates,
    Buckets,
    ReportFiles,
    aggregate,
    build_report,
    chart_refusals,
    summary_markdown,
)
from analysis.sample import BANKS, SampleLog, SampleOptions, generate
from bridge.log.source import open_source

OPTIONS = SampleOptions(entries=400, block_size=25, rate=60.0, seed=21)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("report-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


def count(sample: SampleLog, query: str) -> int:
    db = sqlite3.connect(sample.path)
    try:
        return int(db.execute(query).fetchone()[0] or 0)
    finally:
        db.close()


def test_buckets_coarsen_but_keep_totals() -> None:
    """Past the bucket limit the width doubles; sums are preserved and buckets stay few."""
    buckets = Buckets(lambda a, b: a + b)
    for second in range(10 * MAX_BUCKETS):
        buckets.add(second * 1000, 1)
    assert len(buckets.items()) <= MAX_BUCKETS
    assert buckets.width > 1000
    assert sum(v for _, v in buckets.items()) == 10 * MAX_BUCKETS


def test_aggregates_count_what_the_log_holds(sample: SampleLog) -> None:
    """Settlements, PvP latencies and refusals match counts taken directly from the store."""
    with open_source(sample.path) as source:
        data = aggregate(source)
    settled = count(
        sample, "SELECT COUNT(*) FROM entries WHERE kind IN ('pay','pvp_dual','pvp_accept')"
    )
    assert sum(v for _, v in data.settlements.items()) == settled
    assert len(data.latencies) == count(
        sample, "SELECT COUNT(*) FROM entries WHERE kind='pvp_accept'"
    )
    assert all(wait > 0 for wait in data.latencies)
    assert sum(data.refusals.values()) == count(sample, "SELECT COUNT(*) FROM refusals")
    assert data.entries == sample.entries
    assert data.fx, "settled PvPs give implied rates"


@pytest.fixture(scope="module")
def files(sample: SampleLog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReportFiles]:
    directory = tmp_path_factory.mktemp("report")
    with open_source(sample.path) as source:
        yield build_report(source, directory)
    shutil.rmtree(directory, ignore_errors=True)


def test_report_writes_html_summary_and_charts(sample: SampleLog, files: ReportFiles) -> None:
    """report.html, summary.md and seven non-trivial PNG charts are written."""
    assert [p.name for p in files.charts] == [name for name, _, _ in CHARTS]
    for chart in files.charts:
        data = chart.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 8_000, chart.name
    page = files.html.read_text()
    assert "<script" not in page
    for name, title, _ in CHARTS:
        assert f'src="{name}"' in page
        assert title in page
    summary = files.summary.read_text()
    assert f"| entries | {sample.entries:,} |" in summary
    assert "propose-to-accept wait" in summary
    assert "settlement latency p50 / p95 / p99 / max" in summary
    assert "| corridor | kind | settlements | p50 ms | p95 ms | p99 ms | max ms |" in summary
    assert "<caption>Settlement latency (ms) per corridor and kind</caption>" in page


def test_latency_table_gives_nearest_rank_quantiles_per_corridor_and_kind(
    sample: SampleLog,
) -> None:
    """Each row of the latency table holds the count and the nearest-rank p50 / p95 / p99 and
    max of time minus signed_at over the settlements of its corridor and kind, read here
    straight from the stored entries; "all" rows merge corridors, then kinds."""
    with open_source(sample.path) as source:
        data = aggregate(source)
    db = sqlite3.connect(sample.path)
    try:
        entries = [(json.loads(d), t) for d, t in db.execute("SELECT data, time FROM entries")]
    finally:
        db.close()
    jurisdiction = {b.id: b.jurisdiction for b in sample.genesis.central_banks}
    home = dict(BANKS)
    proposals = {(e["body"]["sender"], e["body"]["instruction_id"]): e["body"] for e, _ in entries}
    expected: dict[tuple[str, str], list[int]] = {}
    for entry, time in entries:
        body = entry["body"]
        if entry["outcome"] != "SETTLED":
            continue
        payer, payee = body["sender"], body.get("payee") or body.get("counterparty")
        if body["kind"] == "pvp_accept":
            proposal = proposals[(body["proposer"], body["pvp_id"])]
            payer, payee = proposal["sender"], proposal["counterparty"]
        corridor = f"{jurisdiction[home[payer]]}-{jurisdiction[home[payee]]}"
        latency = time - body["signed_at"]
        for key in ((corridor, body["kind"]), ("all", body["kind"]), ("all", "all")):
            expected.setdefault(key, []).append(latency)
    table = {(corridor, kind): (n, q) for corridor, kind, n, q in data.latency_table()}
    assert set(table) == set(expected)
    for key, values in expected.items():
        values.sort()
        nearest = [values[min(len(values) - 1, int(q * len(values)))] for q in (0.5, 0.95, 0.99)]
        assert table[key] == (len(values), [*nearest, values[-1]]), key
    assert table[("all", "pvp_dual")][1][0] > table[("all", "pay")][1][0]


def test_report_without_refusals_says_so(sample: SampleLog, tmp_path: Path) -> None:
    """A source with no refusals table reports 'no refusals recorded'."""
    path = tmp_path / "plain.sqlite"
    shutil.copyfile(sample.path, path)
    db = sqlite3.connect(path)
    db.execute("DROP TABLE refusals")
    db.commit()
    db.close()
    with open_source(path) as source:
        data = aggregate(source)
    assert not data.refusals
    assert "| refusals recorded | none |" in summary_markdown(data, str(path))
    figure = chart_refusals(data)
    texts = [t.get_text() for axes in figure.axes for t in axes.texts]
    assert texts == ["no refusals recorded"]


def test_settled_volumes_read_in_major_units_of_each_currency(sample: SampleLog) -> None:
    """The summary states each currency's settled volume exactly, with its own exponent."""
    with open_source(sample.path) as source:
        data = aggregate(source)
    data.currency_value["JPY"] = 1_234_567  # a currency without minor units
    data.exponents["JPY"] = 0
    summary = summary_markdown(data, str(sample.path))
    assert "| volume settled in JPY | 1,234,567 |" in summary
    cny = data.currency_value["CNY"]
    assert cny > 0
    assert f"| volume settled in CNY | {cny // 100:,}.{cny % 100:02d} |" in summary


def test_corridor_volume_is_value_weighted_at_the_logs_own_rates() -> None:
    """One large leg outweighs many small ones; other currencies count at PvP rates."""
    data = Aggregates(exponents={"CNY": 2, "HKD": 2, "THB": 2, "AED": 2})
    data.corridor_legs.update({"CN-HK": 50, "HK-CN": 1, "TH-CN": 1, "AE-CN": 1})
    data.corridor_value.update(
        {
            ("CN-HK", "CNY"): 50 * 100_00,  # 50 legs of 100.00 CNY
            ("HK-CN", "HKD"): 1_090_000_00,  # one leg of 1,090,000.00 HKD
            ("TH-CN", "THB"): 455_00,  # THB valued through HKD
            ("AE-CN", "AED"): 999_00,  # never traded: left out
        }
    )
    data.pair_volume.update({("CNY", "HKD"): (1_000.0, 1_090.0), ("HKD", "THB"): (10.0, 41.0)})
    base, totals = data.corridor_values()
    assert base == "CNY"
    assert totals["HK-CN"] == pytest.approx(1_000_000.0)
    assert totals["CN-HK"] == pytest.approx(5_000.0)
    assert totals["TH-CN"] == pytest.approx(455 * (10 / 41) * (1_000 / 1_090))
    assert "AE-CN" not in totals
    assert totals.most_common(1)[0][0] == "HK-CN"
