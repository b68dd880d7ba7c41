"""The operator's view of a run: a live dashboard, JSON, Prometheus metrics, a summary.

    merchant-meta monitor RUN_DIR [--port 8765] [--host 127.0.0.1]
    merchant-meta status RUN_DIR

Both read the round store (``RUN_DIR/rounds.sqlite``, see :mod:`server.store`) that the
ServerApp writes as each round ends, read-only and while the run goes on. The monitor
serves:

- ``/``: a dashboard that polls ``/api/rounds`` every 2 s and redraws its charts
  (Chart.js, vendored in ``server/static/vendor`` so the page works offline);
- ``/api/rounds``: ``{"run", "rounds", "merchants", "alerts"}`` as JSON;
- ``/metrics``: the Prometheus text format, read from the store at scrape time;
- ``/health``.

It has no authentication, so it binds 127.0.0.1 unless told otherwise; put it behind a
reverse proxy that authenticates before exposing it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from server.store import RUN_STATUSES, RoundStore, store_path

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# The alert line looks at this many latest rounds.
ALERT_WINDOW = 3
# Evaluation metrics with a named gauge of their own (the headline cold-start numbers).
_HEADLINE_METRICS = {"ndcg@10": "ndcg10", "hr@10": "hr10"}


# -- reading the store ------------------------------------------------------------


def open_store(run_dir: str | Path) -> RoundStore:
    """Open a run's round store read-only; a clear error if the run has none."""
    path = store_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"run directory {run_dir}: no round store {path.name} in it; expected the "
            "directory a run writes (run-dir in the run config, runs/<timestamp> "
            "by default)"
        )
    return RoundStore.open_read_only(path)


def dashboard_payload(store: RoundStore) -> dict[str, Any]:
    """Everything the dashboard and the status command show, as plain data."""
    run = store.run_info()
    rounds = store.rounds()
    # Node ids are unsigned 64-bit: as JSON numbers, JavaScript would round them.
    merchants = [{**row, "node_id": str(row["node_id"])} for row in store.merchants()]
    return {
        "run": run,
        "rounds": rounds,
        "merchants": merchants,
        "alerts": alerts(run, rounds, store),
    }


def training_rounds(rounds: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rounds that trained (round 0 and evaluation-only rounds left out)."""
    return [row for row in rounds if row["started_at"] is not None]


def alerts(
    run: Mapping[str, str], rounds: Sequence[Mapping[str, Any]], store: RoundStore
) -> list[str]:
    """What an operator should look at now: the latest rounds' problems.

    Rejected replies (a merchant sent a delta that failed validation) and rounds in
    which fewer merchants replied than ``min_merchants`` of the run info, over the
    last :data:`ALERT_WINDOW` rounds, and a failed run.
    """
    messages = []
    if run.get("status") == "failed":
        messages.append("the run failed")
    min_merchants = _int_or_none(run.get("min_merchants"))
    for row in training_rounds(rounds)[-ALERT_WINDOW:]:
        number = row["round"]
        if row["rejected"]:
            rejected = [
                f"{outcome['merchant_id']}: {outcome['reason'] or 'no reason given'}"
                for outcome in store.round_merchants(number)
                if outcome["status"] == "rejected"
            ]
            plural = "y was" if row["rejected"] == 1 else "ies were"
            messages.append(
                f"round {number}: {row['rejected']} repl{plural} rejected"
                + (f" ({'; '.join(rejected)})" if rejected else "")
            )
        if min_merchants is not None and row["replied"] < min_merchants:
            messages.append(
                f"round {number}: {row['replied']} merchants replied, fewer than "
                f"min_merchants {min_merchants}"
            )
    return messages


def is_ranking_metric(name: str) -> bool:
    """A ranking metric (ndcg@10, hr@10-alone, ...), not its spread or a setting.

    The ServerApp stores spreads ("ndcg@10-std") and settings ("adapt-steps") beside
    the metrics of an evaluation; charts and summaries show the metrics.
    """
    return re.match(r"(ndcg|hr)@[0-9]+", name) is not None and not name.endswith("-std")


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: send null (the charts leave a gap)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


# -- Prometheus -------------------------------------------------------------------


class RoundStoreCollector(Collector):
    """Prometheus metrics read from the round store at each scrape.

    Gauges describe the latest round (and the latest evaluation); counters add up
    every stored round. ``merchant_meta_store_readable`` is 0 when the store could not
    be read, so an alert can tell "no data" from "the run stopped".
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def describe(self) -> Iterable[Metric]:
        # Nothing to check for clashes: this collector has its own registry.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            with open_store(self.run_dir) as store:
                run = store.run_info()
                rounds = store.rounds()
        except Exception:
            logger.warning("metrics: cannot read the round store", exc_info=True)
            yield _gauge("store_readable", "1 if the round store could be read.", 0)
            return
        yield _gauge("store_readable", "1 if the round store could be read.", 1)
        yield from _run_metrics(run)
        yield from _round_metrics(training_rounds(rounds))
        yield from _evaluation_metrics(rounds)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"merchant_meta_{name}", documentation, value=value)


def _run_metrics(run: Mapping[str, str]) -> Iterator[Metric]:
    status = GaugeMetricFamily(
        "merchant_meta_run_status",
        "1 for the run's current status, 0 for the others.",
        labels=["status"],
    )
    for name in RUN_STATUSES:
        status.add_metric([name], 1 if run.get("status") == name else 0)
    yield status
    for key, documentation in (
        ("num_rounds", "Rounds the run is configured for."),
        ("min_merchants", "Fewest merchants a round needs to reply."),
    ):
        value = _int_or_none(run.get(key))
        if value is not None:
            yield _gauge(key, documentation, value)


def _round_metrics(rounds: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    yield _gauge(
        "round",
        "Last completed round (0 before any).",
        rounds[-1]["round"] if rounds else 0,
    )
    if not rounds:
        return
    last = rounds[-1]

    # The latest round's state.
    merchants = GaugeMetricFamily(
        "merchant_meta_merchants",
        "Merchants of the last round by outcome.",
        labels=["state"],
    )
    for state in ("replied", "failed", "rejected"):
        merchants.add_metric([state], last[state])
    yield merchants
    yield _gauge(
        "merchants_sampled", "Merchants sampled in the last round.", last["sampled"]
    )
    yield _gauge(
        "round_duration_seconds",
        "Wall time of the last round.",
        last["ended_at"] - last["started_at"],
    )
    yield _gauge(
        "last_round_end_timestamp_seconds",
        "Unix time the last round ended (alert on staleness).",
        last["ended_at"],
    )
    for key, name, documentation in (
        ("loss_before", "loss_before_adaptation", "Weighted mean loss at theta."),
        ("loss_after", "loss_after_adaptation", "Weighted mean loss after adaptation."),
        (
            "delta_norm_mean",
            "delta_norm_mean",
            "Mean L2 norm of the merchants' deltas.",
        ),
        ("delta_norm_max", "delta_norm_max", "Largest L2 norm of a merchant's delta."),
        ("update_norm", "update_norm", "L2 norm of the step applied to theta."),
        ("meta_lr", "meta_lr", "Reptile outer step size of the last round."),
        ("clip_rate", "clip_rate", "Share of deltas clipped in the last round."),
        ("epsilon", "epsilon", "Differential privacy epsilon spent so far."),
    ):
        if last[key] is not None:
            yield _gauge(name, documentation, last[key])

    # Totals over every stored round.
    replies = CounterMetricFamily(
        "merchant_meta_replies", "Merchant outcomes over all rounds.", labels=["state"]
    )
    for state in ("replied", "failed", "rejected"):
        replies.add_metric([state], sum(row[state] for row in rounds))
    yield replies
    for key, documentation in (
        ("bytes_sent", "Bytes of theta sent to merchants over all rounds."),
        ("bytes_received", "Bytes of replies received over all rounds."),
    ):
        yield CounterMetricFamily(
            f"merchant_meta_{key}", documentation, value=sum(row[key] for row in rounds)
        )


def _evaluation_metrics(rounds: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    evaluated = [row for row in rounds if row["evaluation"]]
    if not evaluated:
        return
    last = evaluated[-1]
    yield _gauge(
        "cold_start_round", "Round of the latest cold-start evaluation.", last["round"]
    )
    every_metric = GaugeMetricFamily(
        "merchant_meta_cold_start",
        "Latest cold-start evaluation of new merchants, by metric.",
        labels=["metric"],
    )
    for metric, value in last["evaluation"].items():
        if value is not None:
            every_metric.add_metric([metric], value)
    yield every_metric
    for metric, name in _HEADLINE_METRICS.items():
        value = last["evaluation"].get(metric)
        if value is not None:
            yield _gauge(
                f"cold_start_{name}",
                f"Latest cold-start {metric} of new merchants after adaptation.",
                value,
            )


# -- the web app ------------------------------------------------------------------


def create_app(run_dir: str | Path) -> FastAPI:
    """The monitor's web app over one run directory."""
    run_dir = Path(run_dir)
    open_store(run_dir).close()  # fail now, with a clear message, if there is no store
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RoundStoreCollector(run_dir))

    app = FastAPI(
        title="merchant-meta monitor", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)

    @app.get("/api/rounds")
    def api_rounds() -> JSONResponse:
        with open_store(run_dir) as store:
            payload = dashboard_payload(store)
        return JSONResponse(_json_safe(payload), headers=_NO_CACHE)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    def health() -> JSONResponse:
        try:
            with open_store(run_dir) as store:
                last_round = store.last_round()
        except Exception as error:
            return JSONResponse({"status": "error", "error": str(error)}, 503)
        return JSONResponse({"status": "ok", "last_round": last_round})

    return app


_NO_CACHE = {"Cache-Control": "no-store"}


# -- commands ---------------------------------------------------------------------

RunDir = Annotated[
    Path,
    typer.Argument(
        help="Run directory holding rounds.sqlite.", file_okay=False, exists=True
    ),
]


def monitor_command(
    run_dir: RunDir,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    host: Annotated[
        str, typer.Option(help="Address to bind; the monitor has no authentication.")
    ] = DEFAULT_HOST,
) -> None:
    """Serve the live dashboard, /api/rounds and /metrics of a run."""
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
        )
    try:
        app = create_app(run_dir)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "monitor: binding %s exposes the dashboard without authentication", host
        )
    logger.info("monitor: serving %s on http://%s:%s/", run_dir, host, port)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")


def status_command(run_dir: RunDir) -> None:
    """Print a short summary of a run: status, last round, evaluation, errors."""
    try:
        with open_store(run_dir) as store:
            payload = dashboard_payload(store)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(format_status(payload, now=time.time()))


def format_status(payload: Mapping[str, Any], now: float) -> str:
    """The terminal summary of a dashboard payload."""
    run = payload["run"]
    rounds = training_rounds(payload["rounds"])
    lines = [
        f"run {run.get('run_id', '?')}: {run.get('status', 'unknown')}, "
        f"{rounds[-1]['round'] if rounds else 0} of {run.get('num_rounds', '?')} "
        "rounds done"
    ]

    if rounds:
        last = rounds[-1]
        lines.append(
            f"round {last['round']} (ended {_ago(now - last['ended_at'])}): "
            f"{last['sampled']} sampled, {last['replied']} replied, "
            f"{last['failed']} failed, {last['rejected']} rejected "
            f"(min_merchants {run.get('min_merchants', '?')})"
        )
        lines.append(
            f"  loss {_number(last['loss_before'])} before adaptation, "
            f"{_number(last['loss_after'])} after; delta norm mean "
            f"{_number(last['delta_norm_mean'])}, max {_number(last['delta_norm_max'])}"
            f"; meta_lr {_number(last['meta_lr'])}"
        )
        if last["epsilon"] is not None:
            lines.append(f"  epsilon {_number(last['epsilon'])}")

    evaluated = [
        row
        for row in payload["rounds"]
        if any(map(is_ranking_metric, row["evaluation"]))
    ]
    if evaluated:
        evaluation = evaluated[-1]["evaluation"]
        metrics = ", ".join(
            _metric_text(name, evaluation)
            for name in evaluation
            if is_ranking_metric(name)
        )
        lines.append(f"cold start (round {evaluated[-1]['round']}): {metrics}")
    else:
        lines.append("cold start: not evaluated yet")

    with_errors = [row for row in payload["merchants"] if row["last_error"]]
    if with_errors:
        lines.append(f"merchants with errors ({len(with_errors)}):")
        for row in with_errors:
            lines.append(
                f"  {row['merchant_id']}: {row['failed']} failed, "
                f"{row['rejected']} rejected; last in round {row['last_error_round']}: "
                f"{row['last_error']}"
            )
    for message in payload["alerts"]:
        lines.append(f"ALERT {message}")
    return "\n".join(lines)


def _metric_text(name: str, evaluation: Mapping[str, float | None]) -> str:
    """ "ndcg@10 0.31", with "± spread" when the evaluation holds one."""
    spread = evaluation.get(f"{name}-std")
    return f"{name} {_number(evaluation[name])}" + (
        f" ± {_number(spread)}" if spread is not None else ""
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
