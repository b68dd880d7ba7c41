"""What secure aggregation costs: plain and SecAgg+ Reptile rounds side by side.

    python -m simulations.secagg_cost [--merchants 10] [--rounds 5] [--out cost.json]
    python -m simulations.secagg_cost --data ../shared/data/xmarket --sources de,fr \
        --merchants-per-market 5            # 10 XMarket merchants

Runs the same federation twice through Flower's simulation engine, one run after the
other in one invocation: plain rounds, then SecAgg+ rounds (``secure-aggregation =
true``), with the same merchants, seed, clipping bound and aggregation (the mean,
which SecAgg+ needs). A round's time is what the round store records, from sending θ
to the step applied, so start-up and the end-of-run report are left out; the first
round, in which the simulation engine starts its workers and each merchant's process
imports torch and builds its data, is left out too. It prints the median time of the
remaining rounds of each path and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from server.store import RoundStore, store_path
from simulations.simulate import run_flower


def round_seconds(run_dir: Path) -> list[float]:
    """Each recorded round's duration, in round order."""
    with RoundStore.open_read_only(store_path(run_dir)) as store:
        return [float(r["ended_at"]) - float(r["started_at"]) for r in store.rounds()]


def measure(
    merchants: int,
    rounds: int,
    secure: bool,
    work: Path,
    seed: int = 0,
    data: Mapping[str, str | int] | None = None,
) -> list[float]:
    """Round times of one run, plain or SecAgg+; ``data`` selects real data."""
    run_dir = work / ("secagg" if secure else "plain")
    code = run_flower(
        {
            "run-dir": str(run_dir),
            "num-rounds": rounds,
            "seed": seed,
            "server-eval": False,
            "aggregation": "mean",
            "secure-aggregation": secure,
            **(data or {}),
        },
        merchants,
    )
    if code != 0:
        raise RuntimeError(
            f"secagg cost: the {'SecAgg+' if secure else 'plain'} run "
            f"failed with exit code {code}"
        )
    return round_seconds(run_dir)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="write the measurements as JSON")
    parser.add_argument(
        "--data", default="", help="XMarket directory (default: synthetic)"
    )
    parser.add_argument("--sources", default="de,fr", help="source markets (real data)")
    parser.add_argument("--merchants-per-market", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both paths; print the ratio of their median round times."""
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="merchant-meta-secagg-"))
    started = time.monotonic()
    data: dict[str, str | int] = {}
    merchants = args.merchants
    if args.data:
        markets = [m for m in args.sources.split(",") if m]
        data = {
            "data-format": "xmarket",
            "data-path": str(Path(args.data).resolve()),
            "source-markets": args.sources,
            "merchants-per-market": args.merchants_per_market,
        }
        merchants = len(markets) * args.merchants_per_market
    plain = measure(merchants, args.rounds, False, work, args.seed, data)
    secure = measure(merchants, args.rounds, True, work, args.seed, data)
    plain_median = statistics.median(plain[1:] or plain)
    secure_median = statistics.median(secure[1:] or secure)
    ratio = secure_median / plain_median
    print(
        f"secagg cost: {merchants} merchants, {args.rounds} rounds each, first "
        f"left out: plain {plain_median:.2f}s per round, SecAgg+ "
        f"{secure_median:.2f}s per round, ratio {ratio:.2f}",
        flush=True,
    )
    if args.out:
        report = {
            "merchants": merchants,
            "data": data.get("data-path", "synthetic"),
            "rounds": args.rounds,
            "plain-seconds": plain,
            "secagg-seconds": secure,
            "ratio-of-medians": ratio,
            "seconds": time.monotonic() - started,
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
