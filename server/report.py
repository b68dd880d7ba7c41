"""The run report: a Markdown page and a plot, written at the end of a run.

The plot answers the one question a data scientist asks of a run: do new merchants
that start from the meta-initialisation and adapt beat the same merchants trained
alone, and by more than the spread over seeds?
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from server.store import RoundStore

logger = logging.getLogger(__name__)


def _value(row: dict[str, Any], key: str) -> float | None:
    """A round's figure, from its training facts or its evaluation metrics."""
    value = row.get(key, (row.get("evaluation") or {}).get(key))
    return None if value is None else float(value)


def plot_cold_start(rows: list[dict[str, Any]], path: Path) -> bool:
    """Cold-start NDCG@10 by round; False when no round was evaluated."""
    evaluated = [row for row in rows if _value(row, "ndcg@10") is not None]
    if not evaluated:
        return False
    rounds = [int(row["round"]) for row in evaluated]
    meta = [_value(row, "ndcg@10") or 0.0 for row in evaluated]
    meta_std = [_value(row, "ndcg@10-std") or 0.0 for row in evaluated]
    alone = _value(evaluated[-1], "ndcg@10-alone")
    alone_std = _value(evaluated[-1], "ndcg@10-alone-std") or 0.0

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    axes.errorbar(
        rounds,
        meta,
        yerr=meta_std,
        marker="o",
        capsize=3,
        label="meta-initialisation + adaptation",
    )
    if alone is not None:
        axes.axhline(alone, color="tab:red", linestyle="--", label="trained alone")
        axes.axhspan(alone - alone_std, alone + alone_std, color="tab:red", alpha=0.15)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round")
    axes.set_ylabel("NDCG@10 (held-out new merchants)")
    axes.set_title("Cold start: new merchants' test items, 99 sampled negatives")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _cell(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def write_report(run_dir: str | Path, store: RoundStore) -> Path:
    """Write ``RUN_DIR/report.md`` (and ``cold_start.png``); return the report path."""
    run_dir = Path(run_dir)
    rows = store.rounds()
    info = store.run_info()
    has_plot = plot_cold_start(rows, run_dir / "cold_start.png")

    lines = [
        f"# merchant-meta run {info.get('run_id', '')}",
        "",
        f"Run directory: `{run_dir}`; status: {info.get('status', 'unknown')}; "
        f"data: {info.get('data', '')}; rounds: {store.last_round()} of "
        f"{info.get('num_rounds', '?')}.",
        "",
    ]
    final = next((r for r in reversed(rows) if _value(r, "ndcg@10") is not None), None)
    if final is not None:
        meta, alone = _value(final, "ndcg@10"), _value(final, "ndcg@10-alone")
        meta_std = _value(final, "ndcg@10-std") or 0.0
        alone_std = _value(final, "ndcg@10-alone-std") or 0.0
        lines += [
            "## Cold start on held-out new merchants",
            "",
            "Test items ranked against 99 sampled negatives; mean ± standard deviation "
            "over adaptation seeds.",
            "",
            "| start | NDCG@10 | HR@10 |",
            "|---|---|---|",
            f"| meta-initialisation + {int(_value(final, 'adapt-steps') or 0)} "
            f"adaptation steps (round {final['round']}) "
            f"| {meta:.4f} ± {meta_std:.4f} | "
            f"{_cell(_value(final, 'hr@10'))} |",
        ]
        if alone is not None:
            lines.append(
                f"| trained alone ({int(_value(final, 'alone-steps') or 0)} steps, "
                f"budget tuned on validation) | {alone:.4f} ± {alone_std:.4f} | "
                f"{_cell(_value(final, 'hr@10-alone'))} |"
            )
            margin = (meta or 0.0) - alone
            lines += [
                "",
                f"Margin {margin:+.4f}; "
                f"spread over seeds {max(meta_std, alone_std):.4f}.",
            ]
        lines.append("")
    if has_plot:
        lines += ["![cold-start NDCG@10 by round](cold_start.png)", ""]

    lines += [
        "## Rounds",
        "",
        "| round | sampled | replied | rejected | failed | loss before | loss after "
        "| delta norm | meta_lr | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if int(row["round"]) == 0:
            continue
        seconds = None
        if row.get("ended_at") is not None and row.get("started_at") is not None:
            seconds = float(row["ended_at"]) - float(row["started_at"])
        lines.append(
            "| "
            + " | ".join(
                _cell(row.get(key))
                for key in ("round", "sampled", "replied", "rejected", "failed")
            )
            + f" | {_cell(row.get('loss_before'))} | {_cell(row.get('loss_after'))} "
            f"| {_cell(row.get('delta_norm_mean'))} "
            f"| {_cell(row.get('meta_lr'), '.3f')} "
            f"| {_cell(seconds, '.1f')} |"
        )
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    logger.info("report: written to %s", path)
    return path
