"""What each delta codec costs in cold-start quality on real markets.

    python -m simulations.codec_quality --data ../shared/data/xmarket \\
        [--codecs float32,int8,row-sparse-int8] [--shots all,1] [--seeds 1] \\
        [--out docs/codec_quality.json]

The cold-start benchmark's ``reptile`` arm (``simulations.benchmark``, its full
configuration) is run once per codec on every leave-one-market-out target of XMarket,
with the same splits, negatives, seeds and adaptation budgets: only how merchants
encode their deltas differs. Each codec's per-user NDCG@10 is compared with float32's
on the same users (paired bootstrap), and the relative change of the mean over targets
is what the byte-saving codecs are judged on (at most 1 % lost).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.codecs import check_codec
from common.config import DataConfig
from common.data import load_interactions
from common.metrics import paired_comparison
from common.protocol import split_markets
from simulations.benchmark import FULL, Job, Plan, run_jobs

logger = logging.getLogger("simulations.codec_quality")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="directory of XMarket files")
    parser.add_argument("--codecs", default="float32,int8,row-sparse-int8")
    parser.add_argument("--shots", default="all,1")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None, help="JSON results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the reptile arm under every codec; print and write the comparison."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    for codec in codecs:
        try:
            check_codec(codec)
        except ValueError as error:
            raise SystemExit(f"codec_quality: {error}") from None
    if codecs[0] != "float32":
        codecs.insert(0, "float32")  # the reference every codec is compared with
    shots_list = tuple(s.strip() for s in args.shots.split(",") if s.strip())

    started = time.monotonic()
    splits = split_markets(load_interactions(args.data, "xmarket"))
    markets = sorted(splits)
    data = DataConfig(
        data_format="xmarket",
        data_path=str(Path(args.data).resolve()),
        merchants_per_market=FULL.merchants_per_market,
    )
    jobs = [
        Job(target, tuple(m for m in markets if m != target), seed)
        for target in markets
        for seed in range(args.seeds)
    ]
    per_user: dict[tuple[str, str, str], np.ndarray] = {}
    total = len(codecs) * len(jobs) * len(shots_list)
    with tqdm(total=total, desc="codec quality", unit="arm", file=sys.stderr) as bar:

        def progress(label: str, done: int) -> None:
            if label:
                bar.set_postfix_str(label)
            bar.update(done)

        for codec in codecs:
            plan = Plan(
                splits, data, FULL, ("reptile",), shots_list, "inprocess", codec
            )
            parts = Path(f"{args.out}.parts") if args.out else None
            for result in run_jobs(plan, jobs, args.workers, parts, progress):
                for shots in shots_list:
                    runs = result.scores[("reptile", shots)]
                    per_user[(codec, result.target, shots)] = np.mean(
                        [run.ndcg for run in runs], axis=0
                    )

    rows: list[dict[str, Any]] = []
    for codec in codecs:
        for shots in shots_list:
            for target in markets:
                test = paired_comparison(
                    per_user[(codec, target, shots)],
                    per_user[("float32", target, shots)],
                    seed=0,
                )
                rows.append(
                    {
                        "codec": codec,
                        "target": target,
                        "shots": shots,
                        "ndcg@10": float(per_user[(codec, target, shots)].mean()),
                        "difference": test.difference,
                        "p": test.p,
                    }
                )
    summary = []
    print(f"{'codec':<18}{'shots':>6}{'mean ndcg@10':>14}{'relative':>10}")
    for codec in codecs:
        for shots in shots_list:
            mean = float(
                np.mean(
                    [
                        r["ndcg@10"]
                        for r in rows
                        if r["codec"] == codec and r["shots"] == shots
                    ]
                )
            )
            reference = float(
                np.mean(
                    [
                        r["ndcg@10"]
                        for r in rows
                        if r["codec"] == "float32" and r["shots"] == shots
                    ]
                )
            )
            relative = mean / reference - 1
            summary.append(
                {
                    "codec": codec,
                    "shots": shots,
                    "mean-ndcg@10": mean,
                    "relative-ndcg@10-change": relative,
                }
            )
            print(f"{codec:<18}{shots:>6}{mean:>14.4f}{relative:>+10.2%}")
    elapsed = time.monotonic() - started
    print(f"codec quality: {elapsed:.0f}s")
    if args.out:
        document = {
            "command": " ".join(
                [
                    "python -m simulations.codec_quality",
                    *(argv if argv is not None else sys.argv[1:]),
                ]
            ),
            "seconds": elapsed,
            "targets": markets,
            "seeds": args.seeds,
            "summary": summary,
            "results": rows,
        }
        Path(args.out).write_text(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
