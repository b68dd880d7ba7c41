"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

The monitor runs as the operator runs it (``merchant-meta monitor RUN_DIR --port P``,
in a subprocess on 127.0.0.1); the page must draw the store's values with Chart.js,
list the merchants with their errors, and pick up a new round without a reload.

By default the tests build a small run by hand (``round_store_examples``). To check the
dashboard over a real run, point ``MERCHANT_META_MONITOR_RUN_DIR`` at its run
directory: the tests copy its round store and never write to the original.

Screenshot of the dashboard (the example run, or RUN_DIR):

    python -m tests.server.test_monitor_browser [RUN_DIR] --screenshot PNG
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from server.store import RoundStore, store_path
from tests.server.round_store_examples import (
    REJECTED_MERCHANT,
    REJECTED_REASON,
    next_round,
    write_example_run,
)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_DIR_VARIABLE = "MERCHANT_META_MONITOR_RUN_DIR"
# Bounds on waiting for a process or the page, not measurements.
START_SECONDS = 60.0
PAGE_MILLISECONDS = 30_000

# Reads back what Chart.js holds for each chart, and whether each canvas has pixels.
_READ_CHARTS = """
() => {
  const read = (id) => {
    const chart = Chart.getChart(id);
    const canvas = document.getElementById(id);
    let painted = 0;
    if (canvas.width > 0 && canvas.height > 0) {
      const pixels = canvas.getContext("2d")
        .getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted += 1;
    }
    return {
      labels: chart.data.labels,
      datasets: chart.data.datasets.map((d) => ({ label: d.label, data: d.data })),
      painted,
    };
  };
  return Object.fromEntries(
    ["loss", "delta", "merchants", "evaluation", "privacy"].map(
      (name) => [name, read(`chart-${name}`)]),
  );
}
"""


# -- helpers a later check can reuse over any run directory ------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve_monitor(run_dir: Path, scratch: Path) -> Iterator[str]:
    """``merchant-meta monitor RUN_DIR`` on a free port; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = scratch / f"monitor-{port}.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
    }
    command = [sys.executable, "-m", "server.cli", "monitor", str(run_dir)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--host", "127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        _wait_for_health(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"monitor exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    pytest.fail(f"monitor not healthy within {START_SECONDS} s:\n{log.read_text()}")


def copy_run(source_run_dir: Path, run_dir: Path) -> None:
    """Copy a run's round store consistently, even while that run still writes it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with RoundStore.open_read_only(store_path(source_run_dir)) as source:
        target = sqlite3.connect(store_path(run_dir))
        source._connection.backup(target)
        target.close()


def launch_chromium(playwright: Any) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def open_dashboard(browser: Browser, url: str, last_round: int) -> Page:
    """Load the page and wait until it shows ``last_round``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url, timeout=PAGE_MILLISECONDS)
    wait_for_round(page, last_round)
    assert errors == [], f"the page raised: {errors}"
    return page


def wait_for_round(page: Page, last_round: int) -> None:
    page.wait_for_function(
        f"document.body.dataset.lastRound === '{last_round}'",
        timeout=PAGE_MILLISECONDS,
    )


def is_ranking_metric(name: str) -> bool:
    """The evaluation metrics the dashboard charts (not spreads or settings)."""
    return re.match(r"(ndcg|hr)@[0-9]+", name) is not None and not name.endswith("-std")


def _shown(value: Any) -> Any:
    """What the page receives for a stored value: JSON has no NaN or infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def assert_dashboard_shows_store(page: Page, run_dir: Path) -> None:
    """Every chart and the merchant table hold exactly the store's values."""
    with RoundStore.open_read_only(store_path(run_dir)) as store:
        run = store.run_info()
        rounds = store.rounds()
        merchants = store.merchants()
    training = [row for row in rounds if row["started_at"] is not None]
    evaluated = [
        row for row in rounds if any(map(is_ranking_metric, row["evaluation"]))
    ]
    labels = [row["round"] for row in training]

    def column(key: str) -> list[Any]:
        return [_shown(row[key]) for row in training]

    charts = page.evaluate(_READ_CHARTS)

    # The charts: labels, series and painted pixels.
    assert charts["loss"]["labels"] == labels
    assert [d["data"] for d in charts["loss"]["datasets"]] == [
        column("loss_before"),
        column("loss_after"),
    ]
    assert [d["data"] for d in charts["delta"]["datasets"]] == [
        column("delta_norm_mean"),
        column("delta_norm_max"),
        column("update_norm"),
    ]
    minimum = float(run["min_merchants"]) if "min_merchants" in run else None
    assert [d["data"] for d in charts["merchants"]["datasets"]] == [
        column("replied"),
        column("failed"),
        column("rejected"),
        [minimum] * len(training),
    ]
    assert charts["evaluation"]["labels"] == [row["round"] for row in evaluated]
    for shown in charts["evaluation"]["datasets"]:
        assert shown["data"] == [
            _shown(row["evaluation"].get(shown["label"])) for row in evaluated
        ]
    assert {d["label"] for d in charts["evaluation"]["datasets"]} == {
        name
        for row in evaluated
        for name in row["evaluation"]
        if is_ranking_metric(name)
    }
    for name in ("loss", "delta", "merchants"):
        assert charts[name]["painted"] > 0, f"chart {name} drew nothing"
    if evaluated:
        assert charts["evaluation"]["painted"] > 0

    # The merchant table: one row per merchant, with its counts and last error.
    rows = page.eval_on_selector_all(
        "#merchants tbody tr",
        "rows => rows.map(r => [r.dataset.merchantId,"
        " Array.from(r.cells).map(c => c.textContent)])",
    )
    shown_rows = dict(rows)
    assert set(shown_rows) == {row["merchant_id"] for row in merchants}
    for row in merchants:
        cells = shown_rows[row["merchant_id"]]
        assert cells[1] == str(row["node_id"])  # all 20 digits, not rounded
        assert cells[2:8] == [
            str(row["sampled"]),
            str(row["replied"]),
            str(row["failed"]),
            str(row["rejected"]),
            str(row["last_round"]),
            row["last_status"],
        ]
        expected_error = (
            f"round {row['last_error_round']}: {row['last_error']}"
            if row["last_error"]
            else ""
        )
        assert cells[8] == expected_error
    assert page.text_content("#run-status") == run.get("status", "unknown")


# -- tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The example run, or a copy of the run named by MERCHANT_META_MONITOR_RUN_DIR."""
    run_dir = tmp_path / "run"
    source = os.environ.get(RUN_DIR_VARIABLE)
    if source:
        copy_run(Path(source), run_dir)
    else:
        write_example_run(run_dir)
    return run_dir


def test_dashboard_draws_the_store_and_follows_a_new_round(
    browser: Browser, run_dir: Path, tmp_path: Path
) -> None:
    # Prepare
    with RoundStore.open_read_only(store_path(run_dir)) as store:
        last_round = store.last_round()
        template = store.rounds()[-1]
    new_round = replace(next_round(last_round), loss_after=0.123456, replied=3)
    with serve_monitor(run_dir, tmp_path) as url:
        page = open_dashboard(browser, url, last_round)
        assert_dashboard_shows_store(page, run_dir)
        page.evaluate("window.loadedOnce = true")

        # Execute: the server records one more round while the page is open.
        with RoundStore(store_path(run_dir)) as store:
            store.record_round(new_round)
        wait_for_round(page, last_round + 1)

        # Assert: the same page (no reload) now shows the new round too.
        assert page.evaluate("window.loadedOnce") is True
        assert_dashboard_shows_store(page, run_dir)
        loss_after = page.evaluate(
            "Chart.getChart('chart-loss').data.datasets[1].data.at(-1)"
        )
        assert loss_after == pytest.approx(0.123456, abs=1e-12)
        assert template["round"] <= last_round


def test_dashboard_names_the_rejected_merchant_and_reason(
    browser: Browser, tmp_path: Path
) -> None:
    # Prepare
    run_dir = tmp_path / "run"
    write_example_run(run_dir)

    # Execute
    with serve_monitor(run_dir, tmp_path) as url:
        page = open_dashboard(browser, url, last_round=3)
        row = page.eval_on_selector(
            f"#merchants tr[data-merchant-id='{REJECTED_MERCHANT}']",
            "r => Array.from(r.cells).map(c => c.textContent)",
        )
        alerts = page.inner_text("#alerts")
        alerts_shown = page.is_visible("#alerts")
        privacy_shown = page.is_visible("#panel-privacy")

    # Assert: counts from round_store_examples; the reason in the table and the alert.
    assert row[0] == REJECTED_MERCHANT
    assert row[5] == "1"  # rejected once
    assert row[8] == f"round 2: {REJECTED_REASON}"
    assert alerts_shown
    assert f"{REJECTED_MERCHANT}: {REJECTED_REASON}" in alerts
    assert "round 3: 2 merchants replied, fewer than min_merchants 3" in alerts
    assert not privacy_shown  # no epsilon or clip rate in this run


def test_merchant_text_is_shown_as_text_not_markup(
    browser: Browser, tmp_path: Path
) -> None:
    # Prepare: a reason carrying markup, as a hostile merchant's reply could.
    run_dir = tmp_path / "run"
    write_example_run(run_dir)
    reason = "<img src=x onerror=\"document.body.dataset.injected='yes'\">"
    record = next_round(3)
    bad = replace(record.merchants[0], status="rejected", reason=reason)
    with RoundStore(store_path(run_dir)) as store:
        store.record_round(replace(record, merchants=(bad, *record.merchants[1:])))

    # Execute
    with serve_monitor(run_dir, tmp_path) as url:
        page = open_dashboard(browser, url, last_round=4)
        error_cell = page.inner_text(
            f"#merchants tr[data-merchant-id='{bad.merchant_id}']"
        )
        injected = page.evaluate("document.body.dataset.injected")
        images = page.eval_on_selector_all("img", "images => images.length")

    # Assert
    assert reason in error_cell
    assert injected is None
    assert images == 0


# -- screenshot -------------------------------------------------------------------


def screenshot(run_dir: Path, output: Path) -> None:
    """Save a full-page screenshot of the dashboard over ``run_dir``."""
    with RoundStore.open_read_only(store_path(run_dir)) as store:
        last_round = store.last_round()
    with (
        tempfile.TemporaryDirectory() as scratch,
        serve_monitor(run_dir, Path(scratch)) as url,
        sync_playwright() as playwright,
    ):
        chromium = launch_chromium(playwright)
        page = open_dashboard(chromium, url, last_round)
        output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(output), full_page=True)
        chromium.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot the monitor's dashboard.")
    parser.add_argument("run_dir", nargs="?", type=Path, help="default: example run")
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG to write")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = arguments.run_dir
        if run_dir is None:
            run_dir = Path(scratch) / "run"
            write_example_run(run_dir)
        screenshot(run_dir, arguments.screenshot)
    print(json.dumps({"screenshot": str(arguments.screenshot)}))


if __name__ == "__main__":
    main()
