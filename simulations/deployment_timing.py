"""Deployment against simulation, the same work side by side in one run.

    python -m simulations.deployment_timing                  # 3 merchants, 4 rounds
    python -m simulations.deployment_timing --out docs/deployment-timing.json

Measures what the README's deployment runbook reports:

- time until all merchants are online: SuperNodes started together, until the
  SuperLink has activated each (TLS handshake, key check, Flower's start-up);
- seconds per round, deployment (one SuperLink, one SuperNode per merchant, TLS and
  merchant authentication, a fresh ClientApp process per message) against Flower's
  simulation engine, on the same synthetic merchants with the same run config;
- bytes per round as ``flwr ls --format json`` counts them (network traffic of the
  run over its rounds), beside the payload the round store counts (θ out, deltas in);
- what the merchant's disk cache saves per round: parsing and splitting the file
  against reading the cached entry, for the merchants' files and a real XMarket market.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client import cache
from common import synthetic
from common.config import ModelConfig
from server.store import RoundStore
from simulations.deployment import LocalDeployment, wait_for
from simulations.simulate import run_flower

logger = logging.getLogger("simulations.deployment_timing")

XMARKET = Path(__file__).resolve().parents[2] / "shared" / "data" / "xmarket"


def round_seconds(run_dir: Path) -> list[float]:
    """Seconds of each recorded round (the ServerApp's own clock)."""
    store = RoundStore.open_read_only(run_dir / "rounds.sqlite")
    try:
        return [
            float(row["ended_at"] - row["started_at"])
            for row in store.rounds()
            if row["ended_at"] is not None
        ]
    finally:
        store.close()


def payload_bytes(run_dir: Path) -> list[int]:
    """θ sent plus deltas received in each round, as the round store counts them."""
    store = RoundStore.open_read_only(run_dir / "rounds.sqlite")
    try:
        return [
            int(row["bytes_sent"] + row["bytes_received"])
            for row in store.rounds()
            if row["bytes_sent"] is not None
        ]
    finally:
        store.close()


def run_deployment(
    root: Path, merchants: int, run_config: dict[str, Any]
) -> dict[str, Any]:
    """A TLS + authenticated deployment of ``merchants`` synthetic merchants."""
    deployment = LocalDeployment(root)
    names = [f"merchant-{index:03d}" for index in range(merchants)]
    try:
        deployment.make_certificates()
        keys = {name: deployment.make_merchant_key(name) for name in names}
        started = time.monotonic()
        deployment.start_superlink()
        wait_for(deployment.healthy, 120, "healthy SuperLink")
        superlink_seconds = time.monotonic() - started
        deployment.register({name: public for name, (_, public) in keys.items()})

        # The same merchants the simulation builds from partition ids 0..N-1.
        for index, name in enumerate(names):
            path = root / "data" / f"{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            merchant = synthetic.source_merchant(int(run_config["seed"]), index)
            merchant.interactions[["user", "item", "time"]].to_csv(path, index=False)
        started = time.monotonic()
        for name in names:
            deployment.start_merchant(
                name,
                {"data-path": str(root / "data" / f"{name}.csv")},
                key=keys[name][0],
            )
        online = deployment.wait_online(names, timeout=600)
        all_online = time.monotonic() - started

        run_dir = root / "runs" / "deployment"
        started = time.monotonic()
        deployment.start_run("run", {**run_config, "run-dir": str(run_dir)})
        code = deployment.wait_exit("run", timeout=3600)
        whole = time.monotonic() - started
        if code != 0:
            raise RuntimeError(
                f"deployment run failed ({code}): "
                f"{deployment.processes['run'].text()[-3000:]}"
            )
        runs = deployment.flwr_json("ls", "deployment").get("runs", [])
    finally:
        deployment.stop_all()
    (run,) = runs
    traffic = run["network-traffic"]
    rounds = int(run_config["num-rounds"])
    return {
        "superlink_healthy_seconds": superlink_seconds,
        "merchant_online_seconds": online,
        "all_online_seconds": all_online,
        "round_seconds": round_seconds(run_dir),
        "flwr_run_seconds": whole,
        "flwr_ls": {
            "inbound_bytes": traffic["inbound-bytes"],
            "outbound_bytes": traffic["outbound-bytes"],
            "total_bytes": traffic["total-bytes"],
            "total_bytes_per_round": traffic["total-bytes"] / rounds,
            "clientapp_seconds": run["compute-time"]["clientapp-seconds"],
            "serverapp_seconds": run["compute-time"]["serverapp-seconds"],
        },
        "payload_bytes_per_round": payload_bytes(run_dir),
    }


def run_simulation(
    root: Path, merchants: int, run_config: dict[str, Any]
) -> dict[str, Any]:
    """The same merchants and run config on Flower's simulation engine."""
    run_dir = root / "runs" / "simulation"
    started = time.monotonic()
    code = run_flower(
        {**run_config, "run-dir": str(run_dir)},
        merchants,
        timeout=3600,
        flwr_home=root / "simulation-flwr",
    )
    whole = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"simulation run failed ({code})")
    return {"round_seconds": round_seconds(run_dir), "flwr_run_seconds": whole}


def cache_savings(
    root: Path, files: dict[str, tuple[Path, str]], model: ModelConfig, repeats: int
) -> dict[str, dict[str, float]]:
    """Median seconds to parse + split + prepare a file, and to read its cache entry."""
    results = {}
    for name, (path, data_format) in files.items():
        source = cache.Source(str(path), data_format)
        parse = []
        for _ in range(repeats):
            started = time.perf_counter()
            cache.build(source, model, seed=0)
            parse.append(time.perf_counter() - started)
        directory = root / "cache" / name
        cache.load_prepared(source, model, 0, directory)  # write the entry
        hits = []
        for _ in range(repeats):
            prepared = cache.load_prepared(source, model, 0, directory)
            if not prepared.cache_hit:
                raise RuntimeError(f"cache: {name} was not served from the cache")
            hits.append(prepared.seconds)
        results[name] = {
            "parse_seconds": statistics.median(parse),
            "cached_seconds": statistics.median(hits),
            "saved_seconds_per_round": statistics.median(parse)
            - statistics.median(hits),
            "users": float(prepared.split.num_users),
        }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run both engines, measure the cache, print and optionally save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="cache timing repeats")
    parser.add_argument("--out", type=Path, default=None, help="write JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    run_config: dict[str, Any] = {
        "num-rounds": args.rounds,
        "server-eval": False,
        "seed": 0,
        "min-train-merchants": args.merchants,
    }
    root = Path(tempfile.mkdtemp(prefix="merchant-meta-timing-"))
    logger.info("timing: scratch directory %s", root)

    # One engine after the other, so neither competes with the other for the cores.
    # Other work on the machine slows both: the load average is kept with the figures.
    load = {"before": os.getloadavg()[0]}
    deployment = run_deployment(root / "deployment", args.merchants, run_config)
    load["between"] = os.getloadavg()[0]
    simulation = run_simulation(root / "simulation", args.merchants, run_config)
    load["after"] = os.getloadavg()[0]

    # Steady rounds: round 1 also installs the app bundle on every SuperNode.
    steady_deployment = statistics.mean(deployment["round_seconds"][1:])
    steady_simulation = statistics.mean(simulation["round_seconds"][1:])
    files = {
        f"synthetic merchant-{i:03d}": (
            root / "deployment" / "data" / f"merchant-{i:03d}.csv",
            "table",
        )
        for i in range(args.merchants)
    }
    for market in ("mx", "uk", "ca"):
        if (XMARKET / f"{market}_5core.txt").exists():
            files[f"xmarket {market}"] = (XMARKET / f"{market}_5core.txt", "xmarket")
    savings = cache_savings(root, files, ModelConfig(), args.repeats)

    result = {
        "merchants": args.merchants,
        "rounds": args.rounds,
        "run_config": run_config,
        "deployment": deployment,
        "simulation": simulation,
        "steady_round_seconds": {
            "deployment": steady_deployment,
            "simulation": steady_simulation,
            "ratio": steady_deployment / steady_simulation,
        },
        "cache": savings,
        "load_average_1min": load,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
