"""The cold-start benchmark on a messy order log: the table reader, the arms, the JSON
contract of DESIGN.md and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common import synthetic
from simulations import benchmark
from simulations.benchmark import main
from simulations.benchmark_report import write_benchmark_report

ARMS = ("popularity", "itemknn", "local", "fedavg", "reptile")


def _order_log(path: Path) -> None:
    """A real-world-shaped order log of two countries: implicit purchases with
    quantities, cancellations (negative quantities), missing customer ids, exact
    duplicate rows and integer customer ids written as floats."""
    world = synthetic.make_world(seed=5)
    frames = []
    for index, market in enumerate(("north", "south")):
        rng = np.random.default_rng(index)
        log = synthetic._merchant_log(world, market, f"m{index}", 150, (8, 12), rng)
        frames.append(log)
    orders = pd.concat(frames, ignore_index=True)
    codes = {user: 10_000 + k for k, user in enumerate(orders["user"].unique())}
    table = pd.DataFrame(
        {
            "InvoiceDate": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(orders["time"], unit="h"),
            "CustomerID": orders["user"].map(codes).astype(float),
            "StockCode": orders["item"],
            "Quantity": np.random.default_rng(0).integers(1, 4, len(orders)),
            "Country": orders["market"].map({"north": "NO", "south": "SO"}),
        }
    )
    noise = table.sample(60, random_state=1).assign(Quantity=-1)  # cancellations
    missing = table.sample(30, random_state=2).assign(CustomerID=np.nan)
    duplicates = table.sample(40, random_state=3)
    pd.concat([table, noise, missing, duplicates]).to_csv(path, index=False)


def _arguments(directory: Path, out: str, *extra: str) -> list[str]:
    return [
        "--data", str(directory / "orders.csv"),
        "--format", "table",
        "--user-col", "CustomerID",
        "--item-col", "StockCode",
        "--time-col", "InvoiceDate",
        "--value-col", "Quantity",
        "--market-col", "Country",
        "--implicit",
        "--targets", "SO",
        "--engine", "inprocess",
        "--quick",
        "--out", str(directory / out),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def benchmark_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("benchmark")
    _order_log(directory / "orders.csv")
    code = main(
        _arguments(
            directory,
            "results.json",
            "--shots", "all,2",
            "--seeds", "1",
            "--arms", ",".join(ARMS),
            "--report", str(directory / "report"),
        )
    )  # fmt: skip
    assert code == 0
    return directory


def test_results_follow_the_json_contract(benchmark_output: Path) -> None:
    # Execute
    document = json.loads((benchmark_output / "results.json").read_text())

    # Assert: one row per (arm, target, shots, metric), with the contract's keys.
    rows = document["results"]
    expected = {
        (arm, "SO", shots, metric)
        for arm in ARMS
        for shots in ("all", 2)
        for metric in ("ndcg@10", "hr@10", "ndcg@10-full")
    }
    assert {(r["arm"], r["target"], r["shots"], r["metric"]) for r in rows} == expected
    for row in rows:
        assert set(row) == {"arm", "target", "shots", "metric", "mean", "ci95", "seeds"}
        lo, hi = row["ci95"]
        assert 0.0 <= lo <= row["mean"] <= hi <= 1.0
        assert len(row["seeds"]) == 1


def test_reptile_is_compared_with_every_other_arm(benchmark_output: Path) -> None:
    # Execute
    comparisons = json.loads((benchmark_output / "results.json").read_text())[
        "comparisons"
    ]

    # Assert
    pairs = {(c["arm"], c["shots"], c["metric"]) for c in comparisons}
    assert pairs == {
        (arm, shots, metric)
        for arm in ARMS
        if arm != "reptile"
        for shots in ("all", 2)
        for metric in ("ndcg@10", "hr@10", "ndcg@10-full")
    }
    for c in comparisons:
        assert set(c) == {"target", "shots", "metric", "arm", "difference", "ci95", "p"}
        assert 0.0 < c["p"] <= 1.0
        assert c["ci95"][0] <= c["difference"] <= c["ci95"][1]


def test_the_report_has_its_tables_and_plots(benchmark_output: Path) -> None:
    # Execute
    report = (benchmark_output / "report" / "README.md").read_text()

    # Assert
    assert "## ndcg@10, shots = all" in report
    assert "## Targets: ndcg@10, shots = 2" in report
    assert "| SO | " in report.split("## Targets: ndcg@10, shots = all")[1]
    assert "## Paired tests, NDCG@10, shots = 2" in report
    assert (benchmark_output / "report" / "steps.png").stat().st_size > 0
    assert (benchmark_output / "report" / "shots.png").stat().st_size > 0


def test_a_rerun_reads_finished_jobs_back_instead_of_running_them(
    benchmark_output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the first run left its finished job beside its results.
    before = json.loads((benchmark_output / "results.json").read_text())["results"]
    assert list((benchmark_output / "results.json.parts").glob("SO-seed0-*.json"))

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished job was run again")

    monkeypatch.setattr(benchmark, "run_job", must_not_run)

    # Execute
    code = main(
        _arguments(
            benchmark_output,
            "results.json",
            "--shots", "all,2",
            "--seeds", "1",
            "--arms", ",".join(ARMS),
        )
    )  # fmt: skip

    # Assert
    assert code == 0
    after = json.loads((benchmark_output / "results.json").read_text())["results"]
    assert after == before


def test_worker_processes_give_the_scores_of_one_process(
    benchmark_output: Path,
) -> None:
    # Execute: two seeds, once in two worker processes and once in this one.
    documents = []
    for workers in ("2", "1"):
        code = main(
            _arguments(
                benchmark_output,
                f"workers-{workers}.json",
                "--shots", "all",
                "--seeds", "2",
                "--arms", "popularity,reptile",
                "--workers", workers,
            )
        )  # fmt: skip
        assert code == 0
        documents.append(
            json.loads((benchmark_output / f"workers-{workers}.json").read_text())
        )

    # Assert: the same per-seed means, seed by seed, and the seeds differ.
    parallel, serial = ({(r["arm"], r["metric"]): r["seeds"] for r in d["results"]}
                        for d in documents)  # fmt: skip
    assert parallel == serial
    assert parallel[("reptile", "ndcg@10")][0] != parallel[("reptile", "ndcg@10")][1]


def test_a_rewritten_report_keeps_the_hand_written_notes(
    benchmark_output: Path, tmp_path: Path
) -> None:
    # Arrange
    document = json.loads((benchmark_output / "results.json").read_text())
    (tmp_path / "notes.md").write_text("## What it shows\n\nA reading of the run.\n")

    # Execute: written twice, as a rerun of the benchmark would.
    write_benchmark_report(document, tmp_path)
    report = write_benchmark_report(document, tmp_path).read_text()

    # Assert: the notes once, under the title and above the numbers.
    assert report.count("A reading of the run.") == 1
    assert report.index("# Cold-start benchmark") < report.index("A reading")
    assert report.index("A reading") < report.index("## ndcg@10, shots = all")


def test_the_warning_names_each_target_where_a_private_arm_is_ahead() -> None:
    # Prepare: reptile behind itemknn on A, ahead of everything private on B, and
    # behind only a pooled (non-private) arm on B.
    def row(arm: str, target: str, mean: float) -> dict[str, object]:
        return {
            "arm": arm,
            "target": target,
            "shots": "all",
            "metric": "ndcg@10",
            "mean": mean,
        }

    summary: dict[str, list[dict[str, object]]] = {
        "results": [
            row("reptile", "A", 0.30),
            row("itemknn", "A", 0.35),
            row("popularity", "A", 0.20),
            row("reptile", "B", 0.40),
            row("itemknn", "B", 0.39),
            row("pooled-itemknn", "B", 0.50),
        ]
    }

    # Execute
    ahead = benchmark.private_arms_ahead(summary)

    # Assert
    assert ahead == ["A/all: itemknn +0.0500"]


def test_the_report_states_the_targets_and_the_headroom_of_pooling(
    tmp_path: Path,
) -> None:
    # Prepare: two targets; itemknn is the best private arm on the mean (0.40),
    # pooled-itemknn the best non-private one (0.42), reptile at 0.38.
    means = {
        "reptile": (0.36, 0.40),
        "itemknn": (0.38, 0.42),
        "popularity": (0.30, 0.44),
        "pooled": (0.30, 0.30),
        "pooled-itemknn": (0.40, 0.44),
    }
    results = [
        {"arm": arm, "target": target, "shots": "all", "metric": "ndcg@10",
         "mean": value, "ci95": [value - 0.01, value + 0.01]}
        for arm, values in means.items()
        for target, value in zip(("A", "B"), values, strict=True)
    ]  # fmt: skip
    comparisons = [
        {"arm": arm, "target": target, "shots": "all", "metric": "ndcg@10",
         "difference": 0.0, "ci95": [0.0, 0.0], "p": 0.01}
        for arm in means if arm != "reptile" for target in ("A", "B")
    ]  # fmt: skip

    # Execute
    report = write_benchmark_report(
        {"results": results, "comparisons": comparisons}, tmp_path
    ).read_text()

    # Assert: 0.38 / 0.40 - 1 = -5.0 %; 0.42 / 0.40 - 1 = +5.0 %; on B popularity
    # (0.44) is the best private arm.
    assert "reptile 0.3800, best private arm itemknn 0.4000: -5.0%" in report
    assert "(target +5%: missed)" in report
    assert "| B | popularity | 0.4400 | 0.4000 | -9.1% | 0.0100 | no |" in report
    assert (
        "Headroom: the best non-private arm, pooled-itemknn 0.4200, is +5.0% "
        "against the best private arm on the mean." in report
    )
