"""The HTML report renders in a real browser (headless Chromium): a screenshot, no console errors.

Chromium is driven from its command line (`--headless --screenshot`), with console output on
stderr (`--enable-logging=stderr --v=0`): page errors, and charts that fail to load (the report
logs them with `console.error`), appear there as `CONSOLE` lines. Without Chromium the test
skips, except under CI=true where it fails (scripts/services.sh installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from analysis.report import CHARTS, build_report
from analysis.sample import SampleOptions, generate
from bridge.log.source import open_source

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1100, 2400)


def chromium() -> Path:
    found = CHROMIUM if CHROMIUM.exists() else None
    if found is None:
        other = shutil.which("chromium") or shutil.which("chromium-browser")
        found = Path(other) if other else None
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing (install it: scripts/services.sh)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def screenshot(
    browser: Path, page: Path, png: Path, profile: Path
) -> subprocess.CompletedProcess[str]:
    command = [
        str(browser),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={png}",
        "--enable-logging=stderr",
        "--v=0",
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("render")
    log = generate(directory / "log.sqlite", SampleOptions(entries=300, block_size=20, rate=40.0))
    with open_source(log.path) as source:
        build_report(source, directory / "report")
    return directory / "report"


def test_report_renders_in_chromium_without_console_errors(
    report_dir: Path, tmp_path: Path
) -> None:
    """Chromium renders report.html to a non-blank screenshot with no console messages."""
    browser = chromium()
    png = tmp_path / "report.png"
    result = screenshot(browser, report_dir / "report.html", png, tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_lines(result.stderr) == []
    assert png.stat().st_size > 50_000
    pixels = np.asarray(matplotlib.image.imread(png))
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    rgb = pixels[..., :3]
    inked = np.mean(rgb.min(axis=2) < 0.9)  # share of pixels that are not (near) white
    assert inked > 0.03, "the page looks blank"
    colours = np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100, "text and charts give many colours"


def test_missing_chart_shows_as_a_console_error(report_dir: Path, tmp_path: Path) -> None:
    """The console check is sharp: a chart that fails to load is reported there."""
    browser = chromium()
    broken = tmp_path / "broken"
    shutil.copytree(report_dir, broken)
    missing = CHARTS[0][0]
    (broken / missing).unlink()
    result = screenshot(browser, broken / "report.html", tmp_path / "b.png", tmp_path / "profile")
    assert result.returncode == 0
    lines = console_lines(result.stderr)
    assert len(lines) == 1
    assert f"chart failed to load: {(broken / missing).as_uri()}" in lines[0]
