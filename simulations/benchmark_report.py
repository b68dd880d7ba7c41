"""The benchmark's Markdown report: tables, paired tests and two plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from simulations.benchmark import ARMS


def _table(results: list[dict[str, Any]], metric: str, shots: Any) -> list[str]:
    rows = [r for r in results if r["metric"] == metric and r["shots"] == shots]
    targets = sorted({r["target"] for r in rows})
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    cell = {(r["arm"], r["target"]): r for r in rows}
    lines = [
        "| arm | " + " | ".join(targets) + " | mean |",
        "|---|" + "---|" * (len(targets) + 1),
    ]
    for arm in arms:
        values = [cell[(arm, t)]["mean"] for t in targets if (arm, t) in cell]
        cells = [
            f"{cell[(arm, t)]['mean']:.4f} [{cell[(arm, t)]['ci95'][0]:.3f}, "
            f"{cell[(arm, t)]['ci95'][1]:.3f}]"
            if (arm, t) in cell
            else ""
            for t in targets
        ]
        mean = sum(values) / len(values) if values else float("nan")
        name = f"**{arm}**" if arm == "reptile" else arm
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:.4f} |")
    return lines


def _comparisons(
    comparisons: list[dict[str, Any]], metric: str, shots: Any
) -> list[str]:
    rows = [c for c in comparisons if c["metric"] == metric and c["shots"] == shots]
    lines = [
        "| target | reptile − arm | difference | 95% CI | p |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(rows, key=lambda c: (c["target"], ARMS.index(c["arm"]))):
        lines.append(
            f"| {c['target']} | {c['arm']} | {c['difference']:+.4f} | "
            f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['p']:.4f} |"
        )
    return lines


def _plot_steps(document: dict[str, Any], path: Path) -> bool:
    curves = document.get("steps_curve") or {}
    if not curves:
        return False
    figure, axes = plt.subplots(
        1, len(curves), figsize=(3.2 * len(curves), 3.2), dpi=110, squeeze=False
    )
    for axis, (target, curve) in zip(axes[0], sorted(curves.items()), strict=True):
        steps = curve["steps"]
        for arm in ("local", "fedavg-finetune", "fomaml", "reptile"):
            if arm in curve:
                axis.plot(steps, curve[arm], marker="o", label=arm)
        axis.set_xscale("symlog", linthresh=10)
        axis.set_title(target)
        axis.set_xlabel("adaptation steps")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test NDCG@10")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _plot_shots(results: list[dict[str, Any]], path: Path) -> bool:
    rows = [r for r in results if r["metric"] == "ndcg@10"]
    shots = sorted({r["shots"] for r in rows}, key=lambda s: (s == "all", s))
    if len(shots) < 2:
        return False
    labels = [str(s) for s in shots]
    figure, axis = plt.subplots(figsize=(6.5, 4), dpi=110)
    for arm in ARMS:
        means = []
        for s in shots:
            values = [r["mean"] for r in rows if r["arm"] == arm and r["shots"] == s]
            means.append(sum(values) / len(values) if values else float("nan"))
        if not all(math.isnan(m) for m in means):
            style = "-" if arm == "reptile" else "--"
            axis.plot(labels, means, style, marker="o", label=arm)
    axis.set_xlabel("shots (support interactions kept per target user)")
    axis.set_ylabel("NDCG@10, mean over targets")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def write_benchmark_report(document: dict[str, Any], directory: Path) -> Path:
    """Write ``DIRECTORY/README.md`` and its plots from the benchmark's JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    results, comparisons = document["results"], document["comparisons"]
    settings = document.get("settings", {})
    lines = [
        "# Cold-start benchmark",
        "",
        "Produced by:",
        "",
        f"    {document.get('command', '')}",
        "",
        f"Wall time {document.get('seconds', 0):.0f} s. Federated training: "
        f"{settings.get('rounds')} rounds of {settings.get('inner_steps')} inner steps "
        f"(lr {settings.get('inner_lr')}, batch {settings.get('batch_size')}), "
        f"{settings.get('merchants_per_market')} merchants per source market, engine "
        f"{settings.get('engine')}, codec {settings.get('codec')}; every tuned arm "
        f"tries {settings.get('search_budget')} configurations on validation items.",
        "",
        "Each cell: mean over the target's users (averaged over seeds) and a 95% "
        "bootstrap interval over users. `ndcg@10` and `hr@10` rank the test item "
        "against 99 sampled negatives; `ndcg@10-full` against the whole catalogue.",
        "",
    ]
    all_shots = sorted({r["shots"] for r in results}, key=lambda s: (s != "all", s))
    for metric in ("ndcg@10", "ndcg@10-full", "hr@10"):
        for shots in all_shots:
            lines += [f"## {metric}, shots = {shots}", ""]
            lines += _table(results, metric, shots)
            lines.append("")
    for shots in all_shots:
        lines += [
            f"## Paired tests, NDCG@10, shots = {shots}",
            "",
            "Difference of reptile minus each arm on the same users; paired "
            "bootstrap over users.",
            "",
        ]
        lines += _comparisons(comparisons, "ndcg@10", shots)
        lines.append("")
    if _plot_steps(document, directory / "steps.png"):
        lines += ["## NDCG@10 against adaptation steps", "", "![steps](steps.png)", ""]
    if _plot_shots(results, directory / "shots.png"):
        lines += ["## NDCG@10 against shots", "", "![shots](shots.png)", ""]
    path = directory / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
