"""Where the time of one federated round goes, with no framework runtime in between.

    python -m simulations.profile_round                  # 1000 merchants, 100 a round
    python -m simulations.profile_round --merchants 200 --per-round 20 --rounds 2 \\
        --top 30 --stats round.pstats

A round is run in this one process through the real code of a federated round: the
Reptile strategy's ``configure_train``, Flower's serialisation of every message both
ways (``simulations.wire``), the ClientApp's ``train`` handler for each sampled
merchant, and the strategy's ``aggregate_train``. Only the transport (gRPC, the
SuperLink's state, Ray) is left out, so what is measured is what our code costs.

It prints CPU seconds per phase and the functions that take the most time (cProfile,
cumulative, in CPU time), for the first round of a fresh process (where merchants'
data is prepared) and for the last. CPU time, because the machine this was written
on is shared: wall time there also holds other people's processes.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def app_run_config(**overrides: Any) -> dict[str, Any]:
    """The Flower run config: the app's defaults in ``pyproject.toml``, overridden.

    Keys are given in snake case here (``fraction_train=0.1``) and kebab case in the
    result, as Flower hands them to the apps.
    """
    with (ROOT / "pyproject.toml").open("rb") as handle:
        defaults = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    config = dict(defaults)
    for key, value in overrides.items():
        name = key.replace("_", "-")
        if name not in config:
            raise ValueError(f"run config has no key {name!r}; known: {sorted(config)}")
        config[name] = value
    return config


def sampling(merchants: int, per_round: int) -> dict[str, Any]:
    """Run-config keys that sample exactly ``per_round`` of ``merchants`` a round.

    The strategy samples ``max(int(n · fraction_train), min_train_merchants)``;
    setting both pins the number whatever the float rounding of the fraction.
    """
    if not 0 < per_round <= merchants:
        raise ValueError(
            f"per-round must be in [1, merchants={merchants}], got {per_round}"
        )
    return {
        "fraction_train": per_round / merchants,
        "min_train_merchants": per_round,
    }


@dataclass
class PhaseTimer:
    """CPU seconds of this process spent per named phase.

    CPU time rather than wall time: the harness runs in one process with torch on
    one thread, so its CPU time is the work, whatever else the machine runs.
    """

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the CPU time of the block to phase ``name``."""
        started = time.process_time()
        try:
            yield
        finally:
            self.seconds[name] += time.process_time() - started


@dataclass
class RoundFacts:
    """What one harness round produced."""

    phases: dict[str, float]
    reply_bytes: list[int]
    instruction_bytes: int
    rejected: int
    theta: dict[str, np.ndarray]


class LocalRounds:
    """Federated rounds through the ServerApp's and ClientApp's code, in-process.

    Every sampled merchant's ``train`` handler gets the message the strategy built,
    after Flower serialised and inflated it, with the node config the simulation
    engine would give (``partition-id``, ``num-partitions``); each reply travels back
    the same way before ``aggregate_train`` validates and aggregates it.
    """

    def __init__(self, run_config: dict[str, Any], num_merchants: int) -> None:
        from flwr.app import Array, ArrayRecord, Context, RecordDict

        from common.config import from_run_config
        from common.model import init_parameters
        from server.strategy import Reptile

        self.run_config = run_config
        self.config = from_run_config(run_config)
        codec = str(run_config.get("codec", "float32"))
        self.strategy = Reptile(self.config.meta, codec=codec, seed=self.config.seed)
        theta = init_parameters(self.config.model, self.config.seed)
        self.arrays = ArrayRecord(array_dict={k: Array(v) for k, v in theta.items()})
        self.contexts = {
            partition + 1: Context(
                run_id=1,
                node_id=partition + 1,
                node_config={
                    "partition-id": partition,
                    "num-partitions": num_merchants,
                },
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for partition in range(num_merchants)
        }

    def get_node_ids(self) -> list[int]:
        """The registered nodes (this object stands in for the strategy's Grid)."""
        return list(self.contexts)

    def run_round(
        self, server_round: int, timer: PhaseTimer | None = None
    ) -> RoundFacts:
        """One round; θ moves by the Reptile step when enough replies are valid."""
        from flwr.app import ConfigRecord
        from flwr.serverapp import Grid

        from client.app import train
        from simulations.wire import server_identity, transmit, wire_bytes

        timer = timer or PhaseTimer()
        replies = []
        with server_identity():
            with timer.phase("server: configure_train"):
                messages = list(
                    self.strategy.configure_train(
                        server_round,
                        self.arrays,
                        ConfigRecord({"seed": self.config.seed}),
                        cast(Grid, self),
                    )
                )
            instruction_bytes = wire_bytes(messages[0]) if messages else 0
            for message in messages:
                with timer.phase("flower: serialise θ, inflate at the node"):
                    received = transmit(message)
                context = self.contexts[message.metadata.dst_node_id]
                with timer.phase("client: train handler"):
                    reply = train(received, context)
                with timer.phase("flower: serialise the reply, inflate at the server"):
                    replies.append(transmit(reply))
            reply_bytes = [wire_bytes(reply) for reply in replies]
            with timer.phase("server: aggregate_train"):
                new_arrays, _ = self.strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            self.arrays = new_arrays
        summary = self.strategy.last_round
        return RoundFacts(
            phases=dict(timer.seconds),
            reply_bytes=reply_bytes,
            instruction_bytes=instruction_bytes,
            rejected=summary.count("rejected") if summary else 0,
            theta={name: array.numpy() for name, array in self.arrays.items()},
        )


def _top_functions(profile: cProfile.Profile, top: int) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    lines = stream.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(lines[start:])


def profile_rounds(
    merchants: int,
    per_round: int,
    rounds: int,
    top: int,
    stats_path: str = "",
    cprofile: bool = True,
) -> dict[str, dict[str, float]]:
    """Run ``rounds`` rounds; print CPU seconds per phase and (under cProfile) the
    top functions of the first and last; return CPU seconds per phase and round.

    cProfile times in CPU seconds too, and slows Python-heavy code more than
    torch's kernels: compare phases with ``cprofile=False``.
    """
    import torch

    torch.set_num_threads(1)  # as in a simulation worker
    harness = LocalRounds(
        app_run_config(server_eval=False, **sampling(merchants, per_round)), merchants
    )
    results: dict[str, dict[str, float]] = {}
    for server_round in range(1, rounds + 1):
        timer = PhaseTimer()
        profile = cProfile.Profile(time.process_time)
        started, wall_started = time.process_time(), time.perf_counter()
        if cprofile:
            profile.enable()
        facts = harness.run_round(server_round, timer)
        profile.disable()
        cpu = time.process_time() - started
        wall = time.perf_counter() - wall_started
        label = f"round {server_round}"
        results[label] = {**facts.phases, "total": cpu, "wall": wall}
        if server_round not in (1, rounds):
            continue
        print(
            f"\nprofile: {label} of {rounds}: {per_round} of {merchants} merchants, "
            f"{cpu:.2f} CPU s ({wall:.2f}s wall"
            f"{', under cProfile' if cprofile else ''})"
        )
        for phase, seconds in sorted(facts.phases.items(), key=lambda kv: -kv[1]):
            print(f"  {phase:<52} {seconds:7.2f}s  {seconds / cpu:6.1%}")
        if cprofile:
            print(_top_functions(profile, top))
        if stats_path:
            profile.dump_stats(f"{stats_path}.{server_round}")
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument(
        "--stats", default="", help="also write pstats files PREFIX.<round>"
    )
    parser.add_argument(
        "--phases-only", action="store_true", help="time phases without cProfile"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Profile rounds and print where the time goes."""
    args = parse_args(argv)
    profile_rounds(
        args.merchants,
        args.per_round,
        args.rounds,
        args.top,
        args.stats,
        cprofile=not args.phases_only,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
