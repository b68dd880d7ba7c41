"""The monitor's JSON, Prometheus metrics, health, pages and the status command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from server.monitor import create_app, format_status, monitor_command, status_command
from server.store import RoundStore, store_path
from tests.server.round_store_examples import (
    EVALUATIONS,
    MISSING_FILE_REASON,
    NODE_IDS,
    REJECTED_MERCHANT,
    REJECTED_REASON,
    example_rounds,
    next_round,
    write_example_run,
)

EXPECTED_ALERTS = [
    f"round 2: 1 reply was rejected ({REJECTED_MERCHANT}: {REJECTED_REASON})",
    "round 2: 2 merchants replied, fewer than min_merchants 3",
    "round 3: 2 merchants replied, fewer than min_merchants 3",
]


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, parsed by Prometheus' own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_api_rounds_holds_the_store_and_the_alerts(tmp_path: Path) -> None:
    # Prepare
    write_example_run(tmp_path)
    client = TestClient(create_app(tmp_path))

    # Execute
    response = client.get("/api/rounds")

    # Assert
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    payload = response.json()
    with RoundStore.open_read_only(store_path(tmp_path)) as store:
        assert payload["rounds"] == store.rounds()
        merchants = store.merchants()
    # Node ids as text: JavaScript numbers cannot hold unsigned 64-bit ids exactly.
    assert payload["merchants"] == [
        {**row, "node_id": str(NODE_IDS[row["merchant_id"]])} for row in merchants
    ]
    assert payload["run"] == {
        "run_id": "example",
        "status": "running",
        "num_rounds": "5",
        "min_merchants": "3",
        "started_at": "1700000000.0",
    }
    assert [row["round"] for row in payload["rounds"]] == [0, 1, 2, 3]
    assert payload["rounds"][2]["evaluation"] == EVALUATIONS[2]
    assert payload["alerts"] == EXPECTED_ALERTS


def test_api_rounds_sends_null_for_non_finite_numbers(tmp_path: Path) -> None:
    # Prepare: a diverged round (infinite loss) must not break the JSON.
    with RoundStore(store_path(tmp_path)) as store:
        store.record_round(replace(example_rounds()[0], loss_after=float("inf")))
    client = TestClient(create_app(tmp_path))

    # Execute
    response = client.get("/api/rounds")

    # Assert: strict JSON (no Infinity token), the loss as null.
    payload = json.loads(response.text, parse_constant=pytest.fail)
    assert payload["rounds"][0]["loss_after"] is None
    assert payload["rounds"][0]["loss_before"] == pytest.approx(0.70, abs=1e-12)


def test_alerts_look_only_at_the_latest_rounds(tmp_path: Path) -> None:
    # Prepare: two clean rounds after the example; round 2 leaves the window of 3.
    write_example_run(tmp_path)
    with RoundStore(store_path(tmp_path)) as store:
        store.record_round(next_round(3))
        store.record_round(next_round(4))
    client = TestClient(create_app(tmp_path))

    # Execute
    alerts = client.get("/api/rounds").json()["alerts"]

    # Assert
    assert alerts == ["round 3: 2 merchants replied, fewer than min_merchants 3"]


def test_metrics_equal_the_stores_values(tmp_path: Path) -> None:
    # Prepare
    write_example_run(tmp_path)
    client = TestClient(create_app(tmp_path))

    # Execute
    samples = scrape(client)

    # Assert: the last round is round 3; totals add rounds 1-3 by hand.
    def value(name: str, **labels: str) -> float:
        return samples[(f"merchant_meta_{name}", frozenset(labels.items()))]

    assert value("store_readable") == 1
    assert value("run_status", status="running") == 1
    assert value("run_status", status="finished") == 0
    assert value("run_status", status="failed") == 0
    assert value("num_rounds") == 5
    assert value("min_merchants") == 3
    assert value("round") == 3
    assert value("merchants", state="replied") == 2
    assert value("merchants", state="failed") == 1
    assert value("merchants", state="rejected") == 0
    assert value("merchants_sampled") == 3
    assert value("round_duration_seconds") == pytest.approx(12.0, abs=1e-6)
    assert value("last_round_end_timestamp_seconds") == pytest.approx(
        1_700_000_037.0, abs=1e-3
    )
    assert value("loss_before_adaptation") == pytest.approx(0.60, abs=1e-12)
    assert value("loss_after_adaptation") == pytest.approx(0.45, abs=1e-12)
    assert value("delta_norm_mean") == pytest.approx(0.11, abs=1e-12)
    assert value("delta_norm_max") == pytest.approx(0.15, abs=1e-12)
    assert value("update_norm") == pytest.approx(0.07, abs=1e-12)
    assert value("meta_lr") == pytest.approx(0.8, abs=1e-12)
    assert value("replies_total", state="replied") == 4 + 2 + 2
    assert value("replies_total", state="failed") == 0 + 1 + 1
    assert value("replies_total", state="rejected") == 0 + 1 + 0
    assert value("bytes_sent_total") == 4000 + 4000 + 3000
    assert value("bytes_received_total") == 4000 + 3000 + 2000
    assert value("cold_start_round") == 2
    assert value("cold_start_ndcg10") == pytest.approx(0.31, abs=1e-12)
    assert value("cold_start_hr10") == pytest.approx(0.55, abs=1e-12)
    assert value("cold_start", metric="ndcg@10-alone") == pytest.approx(0.25, abs=1e-12)
    # No privacy options in this run: no epsilon or clip rate at all, rather than 0.
    names = {name for name, _ in samples}
    assert "merchant_meta_epsilon" not in names
    assert "merchant_meta_clip_rate" not in names


def test_metrics_follow_the_store_between_scrapes(tmp_path: Path) -> None:
    # Prepare
    write_example_run(tmp_path)
    client = TestClient(create_app(tmp_path))
    scrape(client)
    with RoundStore(store_path(tmp_path)) as store:
        store.record_round(replace(next_round(3), epsilon=2.5, clip_rate=0.25))
        store.set_run_info(status="finished")

    # Execute
    samples = scrape(client)

    # Assert
    assert samples[("merchant_meta_round", frozenset())] == 4
    assert samples[("merchant_meta_epsilon", frozenset())] == pytest.approx(2.5)
    assert samples[("merchant_meta_clip_rate", frozenset())] == pytest.approx(0.25)
    assert samples[("merchant_meta_run_status", frozenset({("status", "finished")}))]
    assert samples[("merchant_meta_bytes_received_total", frozenset())] == 12000


def test_metrics_and_health_say_when_the_store_is_gone(tmp_path: Path) -> None:
    # Prepare
    path = write_example_run(tmp_path)
    client = TestClient(create_app(tmp_path))
    assert client.get("/health").json() == {"status": "ok", "last_round": 3}
    path.unlink()

    # Execute
    samples = scrape(client)
    health = client.get("/health")

    # Assert
    assert samples == {("merchant_meta_store_readable", frozenset()): 0}
    assert health.status_code == 503
    assert "no round store rounds.sqlite" in health.json()["error"]


def test_dashboard_page_and_vendored_chart_library_are_served(tmp_path: Path) -> None:
    # Prepare
    write_example_run(tmp_path)
    client = TestClient(create_app(tmp_path))

    # Execute
    page = client.get("/")
    library = client.get("/static/vendor/chart.umd.min.js")
    script = client.get("/static/dashboard.js")

    # Assert: relative links only, so the page also works under a proxy's sub-path.
    assert page.status_code == 200
    assert 'src="static/vendor/chart.umd.min.js"' in page.text
    assert library.status_code == 200
    assert "Chart.js v4.6.1" in library.text[:200]
    assert "Released under the MIT License" in library.text[:200]
    assert 'fetch("api/rounds"' in script.text


def test_a_run_directory_without_a_store_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no round store rounds\.sqlite"):
        create_app(tmp_path)


def cli() -> typer.Typer:
    """The two commands as the merchant-meta command registers them."""
    app = typer.Typer()
    app.command("monitor")(monitor_command)
    app.command("status")(status_command)
    return app


def test_status_command_prints_the_summary(tmp_path: Path) -> None:
    # Prepare
    write_example_run(tmp_path)

    # Execute
    result = CliRunner().invoke(cli(), ["status", str(tmp_path)])

    # Assert
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "run example: running, 3 of 5 rounds done"
    assert lines[1].startswith("round 3 (ended ")
    assert lines[1].endswith(
        "3 sampled, 2 replied, 1 failed, 0 rejected (min_merchants 3)"
    )
    assert (
        f"  m-gb-1: 0 failed, 1 rejected; last in round 2: {REJECTED_REASON}" in lines
    )


def test_status_text_for_the_example_run(tmp_path: Path) -> None:
    # Prepare
    write_example_run(tmp_path)
    client = TestClient(create_app(tmp_path))
    payload = client.get("/api/rounds").json()

    # Execute
    text = format_status(payload, now=1_700_000_037.0 + 5.0)

    # Assert
    assert text.splitlines() == [
        "run example: running, 3 of 5 rounds done",
        "round 3 (ended 5 s ago): 3 sampled, 2 replied, 1 failed, 0 rejected "
        "(min_merchants 3)",
        "  loss 0.6 before adaptation, 0.45 after; delta norm mean 0.11, max 0.15; "
        "meta_lr 0.8",
        "cold start (round 2): hr@10 0.55, ndcg@10 0.31 ± 0.01, ndcg@10-alone 0.25",
        "merchants with errors (2):",
        f"  m-gb-1: 0 failed, 1 rejected; last in round 2: {REJECTED_REASON}",
        f"  m-it-1: 2 failed, 0 rejected; last in round 3: {MISSING_FILE_REASON}",
        *(f"ALERT {message}" for message in EXPECTED_ALERTS),
    ]


@pytest.mark.parametrize("command", ["status", "monitor"])
def test_commands_refuse_a_run_directory_without_a_store(
    tmp_path: Path, command: str
) -> None:
    # Execute
    result = CliRunner().invoke(cli(), [command, str(tmp_path)])

    # Assert: exit 2 with the reason, and no server started for monitor.
    assert result.exit_code == 2
    assert "no round store rounds.sqlite" in result.output


def test_merchant_meta_status_runs_from_the_command_line(tmp_path: Path) -> None:
    # Prepare
    run_dir = tmp_path / "run"
    write_example_run(run_dir)
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}

    # Execute: the real entry point, which registers only the command asked for.
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "status", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
        check=False,
    )

    # Assert
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "run example: running, 3 of 5 rounds done"
