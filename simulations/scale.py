"""Speed, scale and bytes on the wire, measured side by side on this machine.

    python -m simulations.scale                          # 1000 merchants, 100 a round
    python -m simulations.scale --merchants 10000 --rounds 3 --out scale-10k.json
    python -m simulations.scale --quick                  # a small run of every part

One command, several parts, each printed as it ends and all written to ``--out``:

- Flower's simulation engine runs the synthetic federation with ``merchants``
  registered SuperNodes, ``per-round`` of them sampled each round (``flwr run`` with a
  private ``FLWR_HOME`` and free ports, as ``simulations.simulate`` does); seconds per
  round come from the run's round store, peak memory from sampling the whole process
  tree (``flwr``, the SuperLink, the ServerApp, Ray and its workers).
- A plain loop does exactly the same client updates (``simulations.inprocess``'s
  ``client_update``, then the strategy's defended Reptile step) with no framework, in
  as many worker processes as Flower has Ray workers (``--workers``, one thread
  each): the physical limit of this machine for this work. The framework overhead
  ratio is Flower's round time over the plain loop's, measured in the same run.
- The deployment engine on loopback at a small size (``simulations.deployment``: a
  SuperLink and one SuperNode per merchant, TLS and merchant authentication), beside
  the plain loop at the same size.
- Bytes per update of every codec, measured on the serialised Flower reply of the
  real ClientApp (``simulations.wire``), and the quality cost of each codec:
  cold-start NDCG@10 of new merchants after training with it, relative to float32,
  on the same splits and adaptation seeds (``codec_quality``, which the cold-start
  benchmark can call too).
- What a new merchant pays: seconds to adapt θ on 2,000 support interactions on one
  core, and the memory it takes (in a fresh process).

Absolute seconds depend on what else the machine runs; the ratios are measured in
one run, side by side, and are what the targets are judged on.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulations.profile_round import (
    ROOT,
    LocalRounds,
    app_run_config,
    sampling,
)

CODECS = ("float32", "float16", "int8", "row-sparse", "row-sparse-int8")
NEW_MERCHANT_INTERACTIONS = 2000


# ---------------------------------------------------------------------------
# Memory of a process tree
# ---------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process on the machine (Linux /proc)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _descendants(roots: Sequence[int]) -> set[int]:
    tree = _children()
    found: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(tree.get(pid, []))
    return found


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (0 when it is gone); cheap to read."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional memory of a process in KiB (0 when it is gone).

    RSS counts shared pages (torch's libraries, Ray's shared object store) once per
    process, so its sum over a tree overstates; PSS divides each shared page among
    the processes that map it, so its sum is the tree's real share of memory. The
    kernel walks the whole address space to answer, so it is read less often.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process itself, and of the children it has waited for."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime: fields 14 to 17 of proc(5), after the name.
        ticks = [int(value) for value in fields[11:15]]
        return (ticks[0] + ticks[1]) / CLOCK_TICKS, (ticks[2] + ticks[3]) / CLOCK_TICKS
    return 0.0, 0.0


def _label(pid: int) -> str:
    """A short name for a process: its program, the script or module Python runs
    (``multiprocessing.spawn`` for a pool worker), or a Ray worker's actor class."""
    try:
        words = [
            w.decode(errors="replace")
            for w in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if w
        ]
    except OSError:
        return "gone"
    return label_of(words)


def label_of(words: Sequence[str]) -> str:
    """The label of a command line (see ``_label``)."""
    if not words:
        return "unknown"
    program = Path(words[0]).name
    if program.startswith("ray::"):  # "ray::ClientAppActor.run" while running
        return program.split()[0].split(".")[0]
    if not program.startswith("python"):
        return program
    arguments = iter(words[1:])
    for word in arguments:
        if word == "-m":
            return next(arguments, "python -m")
        if word == "-c":
            code = next(arguments, "")
            module = re.match(r"from (\S+) import", code)
            return module.group(1) if module else "python -c"
        if not word.startswith("-"):
            return Path(word).name
    return "python"


@dataclass
class TreeMemory:
    """The processes under some roots, sampled: peak summed RSS and PSS, and the
    CPU seconds they have used over time.

    CPU time is what the work and the framework cost whatever else the machine
    runs: on a shared machine wall time also holds the waits for other people's
    processes. The sampler's own CPU time is left out when it runs inside the tree.
    """

    roots: Callable[[], list[int]]
    every: float = 0.5
    pss_every: int = 8  # samples between two PSS readings
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    peak_processes: int = 0
    cpu_series: list[tuple[float, float]] = field(default_factory=list)
    process_series: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    _own_cpu: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        """Measure the tree once and keep the peaks and the CPU time so far."""
        started = time.thread_time()
        now = time.time()
        pids = _descendants(self.roots())
        self.peak_rss_kib = max(self.peak_rss_kib, sum(_rss_kib(p) for p in pids))
        if len(self.cpu_series) % self.pss_every == 0:
            self.peak_pss_kib = max(self.peak_pss_kib, sum(_pss_kib(p) for p in pids))
        self.peak_processes = max(self.peak_processes, len(pids))

        # Total: each process and the children it reaped (short-lived ones too).
        total = 0.0
        for pid in pids:
            own, reaped = _cpu_seconds(pid)
            if pid == os.getpid():  # the sampler's time is not the tree's work
                own -= self._own_cpu
            total += own + reaped
            self.process_series.setdefault(pid, []).append((now, own))
            label = _label(pid)
            if label not in ("unknown", "gone"):  # exec'd, and not yet exiting
                self.labels[pid] = label
        self.cpu_series.append((now, total))
        self._own_cpu += time.thread_time() - started

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the tree used between two ``time.time()`` instants.

        A process that exits without a parent in the tree waiting for it takes its
        CPU time out of the sum, so the series is made non-decreasing first.
        """
        if len(self.cpu_series) < 2:
            return float("nan")
        times = np.array([t for t, _ in self.cpu_series])
        totals = np.maximum.accumulate(np.array([c for _, c in self.cpu_series]))
        return float(np.interp(end, times, totals) - np.interp(start, times, totals))

    def cpu_by_process_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per kind of process (``_label``) between two instants,
        largest first.

        Each process's own time (not its reaped children's) is followed from its
        samples, under its last label; what processes too short-lived to be seen
        used shows as "other (short-lived processes)".
        """
        used: dict[str, float] = defaultdict(float)
        for pid, series in self.process_series.items():
            times = np.array([t for t, _ in series])
            totals = np.maximum.accumulate(np.array([c for _, c in series]))
            first = np.interp(start, times, totals, left=0.0)
            used[self.labels.get(pid, "unknown")] += float(
                np.interp(end, times, totals, left=0.0) - first
            )
        other = self.cpu_between(start, end) - sum(used.values())
        if other > 0.01:
            used["other (short-lived processes)"] = other
        return dict(sorted(used.items(), key=lambda item: -item[1]))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def figures(self) -> dict[str, float]:
        """Peaks in MB (10⁶ bytes), as reported."""
        return {
            "peak-rss-mb": round(self.peak_rss_kib * 1024 / 1e6, 1),
            "peak-pss-mb": round(self.peak_pss_kib * 1024 / 1e6, 1),
            "peak-processes": self.peak_processes,
            "sampler-cpu-seconds": round(self._own_cpu, 2),
        }


# ---------------------------------------------------------------------------
# Figures of one engine
# ---------------------------------------------------------------------------


@dataclass
class EngineRun:
    """What one engine did: round wall and CPU times, whole wall time, memory."""

    engine: str
    merchants: int
    per_round: int
    round_seconds: list[float]
    wall_seconds: float
    memory: dict[str, float]
    round_cpu_seconds: list[float] = field(default_factory=list)
    note: str = ""
    cpu_by_process: dict[str, float] = field(default_factory=dict)

    @classmethod
    def measured(
        cls,
        engine: str,
        merchants: int,
        per_round: int,
        spans: list[tuple[float, float]],
        wall_seconds: float,
        tree: TreeMemory,
        note: str = "",
    ) -> EngineRun:
        """Figures of rounds spanning ``spans`` (``time.time()`` start, end)."""
        return cls(
            engine,
            merchants,
            per_round,
            [end - start for start, end in spans],
            wall_seconds,
            tree.figures(),
            [tree.cpu_between(start, end) for start, end in spans],
            note,
            # The rounds after the first, per kind of process.
            tree.cpu_by_process_between(spans[min(1, len(spans) - 1)][0], spans[-1][1]),
        )

    @property
    def seconds_per_round(self) -> float:
        """Mean over every round, the first (workers warming up) included."""
        return float(np.mean(self.round_seconds))

    @property
    def steady_seconds_per_round(self) -> float:
        """Mean over the rounds after the first: the cost of a round once running."""
        return float(np.mean(self.round_seconds[1:] or self.round_seconds))

    @property
    def steady_cpu_seconds_per_round(self) -> float:
        """CPU seconds of the whole process tree per round, after the first."""
        later = self.round_cpu_seconds[1:] or self.round_cpu_seconds
        return float(np.mean(later)) if later else float("nan")

    def summary(self) -> dict[str, Any]:
        """The figures, as written to the JSON."""
        return {
            "engine": self.engine,
            "merchants": self.merchants,
            "per-round": self.per_round,
            "rounds": len(self.round_seconds),
            "round-seconds": [round(s, 3) for s in self.round_seconds],
            "seconds-per-round": round(self.seconds_per_round, 3),
            "steady-seconds-per-round": round(self.steady_seconds_per_round, 3),
            "updates-per-second": round(self.per_round / self.seconds_per_round, 3),
            "steady-updates-per-second": round(
                self.per_round / self.steady_seconds_per_round, 3
            ),
            "round-cpu-seconds": [round(s, 2) for s in self.round_cpu_seconds],
            "steady-cpu-seconds-per-round": round(self.steady_cpu_seconds_per_round, 3),
            "wall-seconds": round(self.wall_seconds, 2),
            "cpu-seconds-by-process-after-round-1": {
                label: round(seconds, 2)
                for label, seconds in self.cpu_by_process.items()
                if seconds >= 0.01
            },
            **self.memory,
            **({"note": self.note} if self.note else {}),
        }


def _round_spans(run_dir: Path) -> list[tuple[float, float]]:
    """(start, end) ``time.time()`` of every trained round, from the round store."""
    from server.store import STORE_FILENAME, RoundStore

    if not (run_dir / STORE_FILENAME).exists():
        return []
    store = RoundStore(run_dir / STORE_FILENAME, read_only=True)
    try:
        rows = [row for row in store.rounds() if row.get("started_at") is not None]
    finally:
        store.close()
    return [(float(row["started_at"]), float(row["ended_at"])) for row in rows]


def _render(value: str | int | float | bool) -> str:
    """A ``--run-config`` value: quoted strings, lower-case booleans, bare numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "") + "'"
    return str(value)


def flower_run_config(
    merchants: int, per_round: int, rounds: int, codec: str, run_dir: Path
) -> dict[str, Any]:
    """Run-config overrides of a timed run: training only, no server evaluation."""
    keys = sampling(merchants, per_round)
    return {
        "num-rounds": rounds,
        "fraction-train": keys["fraction_train"],
        "min-train-merchants": keys["min_train_merchants"],
        "codec": codec,
        "server-eval": False,
        "run-dir": str(run_dir),
    }


SUPERLINK_START_FAILED = "Failed to start local SuperLink"


def run_flower_simulation(
    merchants: int,
    per_round: int,
    rounds: int,
    codec: str = "float32",
    workers: int = 2,
    timeout: float = 3600.0,
    attempts: int = 3,
) -> EngineRun:
    """The synthetic federation on Flower's simulation engine, timed and measured.

    ``flwr run`` gives the local SuperLink it starts 15 seconds to answer; on a busy
    machine that can pass, and the command is then simply tried again.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _flower_simulation_once(
                merchants, per_round, rounds, codec, workers, timeout
            )
        except RuntimeError as error:
            if SUPERLINK_START_FAILED not in str(error) or attempt == attempts:
                raise
            print(f"scale: local SuperLink slow to start, attempt {attempt + 1}")
    raise AssertionError("unreachable")


def _flower_simulation_once(
    merchants: int,
    per_round: int,
    rounds: int,
    codec: str,
    workers: int,
    timeout: float,
) -> EngineRun:
    from simulations.simulate import flower_environment, stop_local_superlink

    scratch = Path(tempfile.mkdtemp(prefix="merchant-meta-scale-"))
    run_dir = scratch / "run"
    env = flower_environment(scratch / "flwr-home")
    env.update(HOME=str(scratch), TMPDIR=str(scratch))
    overrides = flower_run_config(merchants, per_round, rounds, codec, run_dir)
    command = [
        str(Path(sys.executable).with_name("flwr")),
        "run",
        str(ROOT),
        "--stream",
        "--run-config",
        " ".join(f"{k}={_render(v)}" for k, v in overrides.items()),
        "--federation-config",
        f"num-supernodes={merchants} "
        f"client-resources-num-cpus={max((os.cpu_count() or 1) // workers, 1)}",
    ]
    log = scratch / "flwr-run.log"
    superlink_port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )

        def roots() -> list[int]:
            # The local SuperLink is started detached: find it by its private port.
            return [process.pid, *_pids_with_argument(superlink_port)]

        try:
            with TreeMemory(roots) as memory:
                code = process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
            stop_local_superlink(env)
    wall = time.perf_counter() - started
    spans = _round_spans(run_dir)
    if code != 0 or len(spans) != rounds:
        raise RuntimeError(
            f"flower simulation: exit {code}, {len(spans)} of {rounds} rounds; "
            f"log {log}:\n{log.read_text()[-3000:]}"
        )
    return EngineRun.measured(
        "flower-simulation", merchants, per_round, spans, wall, memory
    )


def _pids_with_argument(argument: str) -> list[int]:
    """Processes whose command line holds ``argument`` (a private port)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            words = (entry / "cmdline").read_bytes().split(b"\0")
            if argument.encode() in words:
                found.append(int(entry.name))
    return found


# ---------------------------------------------------------------------------
# The plain loop: the same client updates, no framework
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # the same bound as the ClientApp's cache
def _plain_merchant(run_config: tuple[tuple[str, Any], ...], index: int, n: int) -> Any:
    from common.adapt import MerchantData
    from common.config import from_run_config
    from common.federation import source_merchant

    config = from_run_config(dict(run_config))
    merchant = source_merchant(config.data, index, n)
    return merchant.merchant_id, MerchantData.from_split(merchant.split, config.model)


def _plain_worker_start() -> None:
    """Import what a round needs before the timed rounds (a Ray worker's imports
    happen before its first message's work too, though inside round 1)."""
    import torch

    import simulations.inprocess  # noqa: F401

    torch.set_num_threads(1)  # as a Ray worker running the ClientApp


def _plain_worker_pid(_: int) -> int:
    time.sleep(0.2)  # long enough that every worker takes one
    return os.getpid()


def _plain_updates(
    job: tuple[dict[str, np.ndarray], list[int], int, int, tuple[tuple[str, Any], ...]],
) -> list[tuple[dict[str, np.ndarray], int, float, float]]:
    """Client updates of some merchants of one round, in a worker process."""
    from common.config import from_run_config
    from simulations.inprocess import client_update

    theta, indices, num_merchants, server_round, run_config = job
    config = from_run_config(dict(run_config))
    codec = str(dict(run_config).get("codec", "float32"))
    results = []
    for index in indices:
        # A merchant whose data cannot be used fails alone, as its ClientApp would.
        try:
            merchant_id, data = _plain_merchant(run_config, index, num_merchants)
        except ValueError as error:
            print(f"scale: plain loop: merchant {index} failed: {error}")
            continue
        delta, adapted = client_update(
            theta, data, merchant_id, config, server_round, codec
        )
        results.append(
            (delta, adapted.num_examples, adapted.loss_before, adapted.loss_after)
        )
    return results


def run_plain_loop(
    merchants: int,
    per_round: int,
    rounds: int,
    codec: str = "float32",
    workers: int = 2,
) -> EngineRun:
    """The same rounds as the Flower run, in ``workers`` plain processes.

    Each round samples ``per_round`` merchants (seeded), splits them evenly over the
    workers, each worker builds its merchants on first use (cached as the ClientApp
    caches them) and runs ``client_update``; the parent applies the strategy's
    defended Reptile step. Deltas travel between processes as pickled arrays.
    """
    from common.config import from_run_config
    from common.model import init_parameters
    from common.reptile import apply_step, delta_weights, meta_lr_at
    from common.robust import defended_step

    scratch = Path(tempfile.mkdtemp(prefix="merchant-meta-plain-"))
    raw = app_run_config(server_eval=False, codec=codec, num_rounds=rounds)
    raw.update(flower_run_config(merchants, per_round, rounds, codec, scratch))
    config = from_run_config(raw)
    frozen = tuple(sorted(raw.items()))
    theta = init_parameters(config.model, config.seed)
    noise = np.random.default_rng([config.seed, 0xD9])
    context = multiprocessing.get_context("spawn")
    spans = []
    started = time.perf_counter()
    with (
        TreeMemory(lambda: [os.getpid()]) as memory,
        context.Pool(workers, initializer=_plain_worker_start) as pool,
    ):
        while len(set(pool.map(_plain_worker_pid, range(workers), 1))) < workers:
            pass  # until every worker has started
        for server_round in range(1, rounds + 1):
            round_started = time.time()
            sampled = sorted(
                random.Random(config.seed * 100_003 + server_round).sample(
                    range(merchants), per_round
                )
            )
            jobs = [
                (theta, sampled[w::workers], merchants, server_round, frozen)
                for w in range(workers)
            ]
            updates = [u for part in pool.map(_plain_updates, jobs) for u in part]
            deltas = [delta for delta, _, _, _ in updates]
            weights = delta_weights(
                [n for _, n, _, _ in updates], config.meta.weighting
            )
            step = defended_step(
                deltas, weights, config.defence, num_sampled=per_round, rng=noise
            )
            meta = config.meta
            meta_lr = meta_lr_at(
                server_round, meta.num_rounds, meta.meta_lr, meta.meta_lr_final
            )
            theta = apply_step(theta, step.step, meta_lr)
            spans.append((round_started, time.time()))
    wall = time.perf_counter() - started
    return EngineRun.measured(
        f"plain-loop ({workers} processes)", merchants, per_round, spans, wall, memory
    )


# ---------------------------------------------------------------------------
# The deployment engine on loopback
# ---------------------------------------------------------------------------


def run_deployment(
    merchants: int, rounds: int, codec: str = "float32", timeout: float = 1800.0
) -> EngineRun:
    """A SuperLink and ``merchants`` SuperNodes on 127.0.0.1, every merchant sampled.

    Uses ``simulations.deployment``: TLS with a private CA and merchant authentication
    with registered keys, as in production; each message runs in a fresh ClientApp
    process, as Flower's deployment engine does.
    """
    from simulations.deployment import LocalDeployment

    scratch = Path(tempfile.mkdtemp(prefix="merchant-meta-deploy-"))
    deployment = LocalDeployment(scratch)
    run_dir = scratch / "run"
    names = [f"m{index}" for index in range(merchants)]
    started = time.perf_counter()
    try:
        with TreeMemory(
            lambda: [p.popen.pid for p in deployment.processes.values()]
        ) as memory:
            deployment.make_certificates()
            keys = {name: deployment.make_merchant_key(name) for name in names}
            deployment.start_superlink()
            from simulations.deployment import wait_for

            wait_for(deployment.healthy, 120, "the SuperLink's /health")
            deployment.register({name: key[1] for name, key in keys.items()})
            for index, name in enumerate(names):
                deployment.start_merchant(
                    name,
                    {"partition-id": str(index), "num-partitions": str(merchants)},
                    key=keys[name][0],
                )
            deployment.wait_online(names, timeout=300)
            ready = time.perf_counter()
            overrides = flower_run_config(merchants, merchants, rounds, codec, run_dir)
            deployment.start_run("run", overrides)
            code = deployment.wait_exit("run", timeout=timeout)
            finished = time.perf_counter()
    finally:
        deployment.stop_all()
    spans = _round_spans(run_dir)
    if code != 0 or len(spans) != rounds:
        raise RuntimeError(
            f"deployment: exit {code}, {len(spans)} of {rounds} rounds; "
            f"{deployment.processes['run'].text()[-3000:]}"
        )
    return EngineRun.measured(
        "flower-deployment (loopback, TLS, merchant auth)",
        merchants,
        merchants,
        spans,
        finished - ready,
        memory,
        note=f"setup (certificates, keys, SuperLink, SuperNodes online) "
        f"{ready - started:.1f}s, not in wall-seconds",
    )


# ---------------------------------------------------------------------------
# Codecs: bytes on the wire and quality
# ---------------------------------------------------------------------------


def codec_bytes(merchants: int, codecs: Sequence[str] = CODECS) -> list[dict[str, Any]]:
    """Mean bytes of a merchant's serialised train reply under each codec.

    Every merchant replies through the real ClientApp handler; the reply is
    serialised with Flower's own code and validated and aggregated by the strategy,
    which must accept every reply.
    """
    import torch

    torch.set_num_threads(1)
    measured: dict[str, list[int]] = {}
    theta_bytes = 0
    for codec in codecs:
        harness = LocalRounds(
            app_run_config(
                server_eval=False, codec=codec, **sampling(merchants, merchants)
            ),
            merchants,
        )
        facts = harness.run_round(1)
        if facts.rejected:
            raise RuntimeError(f"codec {codec}: the strategy rejected {facts.rejected}")
        measured[codec] = facts.reply_bytes
        theta_bytes = facts.instruction_bytes
    base = float(np.mean(measured["float32"])) if "float32" in measured else None
    return [
        {
            "codec": codec,
            "bytes-per-update": round(float(np.mean(sizes)), 1),
            "ratio-vs-float32": (
                round(base / float(np.mean(sizes)), 3) if base is not None else None
            ),
            "bytes-min": min(sizes),
            "bytes-max": max(sizes),
            "theta-bytes": theta_bytes,
        }
        for codec, sizes in measured.items()
    ]


def codec_quality(
    config: Any,
    merchants: Sequence[Any],
    targets: Sequence[Any],
    codecs: Sequence[str] = CODECS,
    seeds: int = 3,
) -> list[dict[str, Any]]:
    """Cold-start NDCG@10 after federated training with each codec, against float32.

    ``config`` is a ``RunConfig``; ``merchants`` the federating ``Merchant``s;
    ``targets`` the new merchants (``Merchant``s), scored after adapting with the
    new-merchant budget of ``config.evaluation`` under ``seeds`` adaptation seeds.
    Every codec trains on the same merchants, rounds and seeds and is scored on the
    same users, candidates and seeds, so the per-user differences are paired.
    """
    from common.adapt import MerchantData
    from common.evaluation import Budget, cold_start_scores
    from common.metrics import paired_comparison
    from simulations.inprocess import run_inprocess

    prepared = [
        (m.split, MerchantData.from_split(m.split, config.model)) for m in targets
    ]
    evaluation = config.evaluation
    budget = Budget(
        evaluation.adapt_steps, evaluation.adapt_lr, config.adapt.batch_size
    )
    per_user: dict[str, np.ndarray] = {}
    for codec in codecs:
        theta = run_inprocess(config, list(merchants), codec=codec).parameters
        per_user[codec] = np.mean(
            [
                cold_start_scores(theta, prepared, config.model, budget, seed).ndcg
                for seed in range(seeds)
            ],
            axis=0,
        )
    base = per_user.get("float32")
    rows = []
    for codec, scores in per_user.items():
        row: dict[str, Any] = {
            "codec": codec,
            "ndcg@10": round(float(scores.mean()), 5),
        }
        if base is not None:
            paired = paired_comparison(scores, base)
            row["relative-ndcg@10-change"] = round(
                float(scores.mean() / base.mean() - 1.0), 5
            )
            row["difference-ci95"] = [round(x, 5) for x in paired.ci95]
            row["max-abs-user-difference"] = round(
                float(np.abs(scores - base).max()), 5
            )
        rows.append(row)
    return rows


def synthetic_codec_quality(
    merchants: int, rounds: int, seeds: int, codecs: Sequence[str] = CODECS
) -> list[dict[str, Any]]:
    """``codec_quality`` on the embedded synthetic federation (the app's defaults)."""
    from common.config import from_run_config
    from common.federation import new_merchants, source_merchants

    raw = app_run_config(num_rounds=rounds)
    config = from_run_config(raw)
    return codec_quality(
        config,
        source_merchants(config.data, merchants),
        new_merchants(config.data),
        codecs,
        seeds,
    )


# ---------------------------------------------------------------------------
# A new merchant's adaptation
# ---------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB (``VmRSS``: now, ``VmHWM``: peak).

    ``VmHWM`` rather than ``getrusage``'s ``ru_maxrss``: Linux carries the latter
    over from the parent a spawned process was forked from.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no {key}")


def _adaptation_probe(repeats: int, queue: Any) -> None:
    """In a fresh process: adapt θ on a new merchant with 2,000 support interactions."""
    import torch

    torch.set_num_threads(1)
    from common import synthetic
    from common.adapt import MerchantData, adapt
    from common.config import AdaptConfig, EvalConfig, ModelConfig
    from common.model import init_parameters
    from common.protocol import leave_one_out

    model = ModelConfig()
    evaluation = EvalConfig()
    budget = AdaptConfig(
        inner_steps=evaluation.adapt_steps, inner_lr=evaluation.adapt_lr
    )
    # 250 customers with 10 purchases each: leave-one-out keeps 8 each as support.
    merchant = synthetic.new_merchants(
        seed=0, per_market=1, users_per_merchant=250, interactions_per_user=(10, 10)
    )[0]
    theta = init_parameters(model, seed=0)
    baseline_kib = _status_kib("VmRSS")

    prepare_started = time.perf_counter()
    split = leave_one_out(merchant.interactions, merchant.market, seed=0)
    data = MerchantData.from_split(split, model)
    prepare_seconds = time.perf_counter() - prepare_started

    timings = []
    for repeat in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        adapt(theta, data, model, budget, seed=repeat)
        timings.append((time.perf_counter() - wall, time.process_time() - cpu))
    peak_kib = _status_kib("VmHWM")
    queue.put(
        {
            "support-interactions": data.num_examples,
            "catalogue-items": len(split.item_ids),
            "steps": budget.inner_steps,
            "threads": torch.get_num_threads(),
            "prepare-seconds": round(prepare_seconds, 4),
            "first-adapt-seconds": round(timings[0][0], 4),
            "adapt-seconds-median": round(
                float(np.median([w for w, _ in timings[1:]])), 4
            ),
            "adapt-cpu-seconds-median": round(
                float(np.median([c for _, c in timings[1:]])), 4
            ),
            "rss-before-mb": round(baseline_kib * 1024 / 1e6, 1),
            "peak-rss-mb": round(peak_kib * 1024 / 1e6, 1),
            "adapt-extra-mb": round(max(peak_kib - baseline_kib, 0) * 1024 / 1e6, 1),
        }
    )


def adaptation_cost(repeats: int = 6) -> dict[str, Any]:
    """A new merchant's adaptation on one core, measured in a fresh process.

    The first adaptation of a process also pays one-time costs (lazy
    initialisation inside torch); the median of the later ones is the steady cost.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_adaptation_probe, args=(repeats, queue))
    process.start()
    result = dict(queue.get(timeout=600))
    process.join()
    return result


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes of one invocation."""

    merchants: int
    per_round: int
    rounds: int
    workers: int
    deployment_merchants: int
    deployment_rounds: int
    codec_merchants: int
    quality_merchants: int
    quality_rounds: int
    quality_seeds: int
    adaptation_repeats: int
    codec: str = "float32"  # how merchants encode deltas in the timed runs


def plan_for(args: argparse.Namespace) -> Plan:
    """The sizes: the command line's, or the small ones of ``--quick``."""
    if args.quick:
        return Plan(
            merchants=20,
            per_round=4,
            rounds=2,
            workers=args.workers,
            deployment_merchants=0,
            deployment_rounds=1,
            codec_merchants=3,
            quality_merchants=4,
            quality_rounds=2,
            quality_seeds=1,
            adaptation_repeats=3,
            codec=args.codec,
        )
    return Plan(
        merchants=args.merchants,
        per_round=args.per_round,
        rounds=args.rounds,
        workers=args.workers,
        deployment_merchants=args.deployment_merchants,
        deployment_rounds=args.deployment_rounds,
        codec_merchants=args.codec_merchants,
        quality_merchants=args.quality_merchants,
        quality_rounds=args.quality_rounds,
        quality_seeds=3,
        adaptation_repeats=6,
        codec=args.codec,
    )


def _print_engines(title: str, runs: Sequence[EngineRun]) -> None:
    print(f"\nscale: {title}")
    print(
        f"  {'engine':<48} {'round 1':>8} {'later':>7} {'CPU s':>7} "
        f"{'updates/s':>9} {'wall s':>7} {'RSS MB':>7} {'PSS MB':>7}"
    )
    for run in runs:
        figures = run.summary()
        print(
            f"  {run.engine:<48} {run.round_seconds[0]:>8.2f} "
            f"{run.steady_seconds_per_round:>7.2f} "
            f"{run.steady_cpu_seconds_per_round:>7.2f} "
            f"{figures['steady-updates-per-second']:>9.2f} "
            f"{figures['wall-seconds']:>7.1f} "
            f"{figures['peak-rss-mb']:>7.0f} {figures['peak-pss-mb']:>7.0f}"
        )
    print("  (round 1, later: wall seconds per round; CPU s: the tree's CPU seconds")
    print("   per later round; updates/s in later rounds)")
    for run in runs:
        later = max(len(run.round_seconds) - 1, 1)
        top = ", ".join(
            f"{label} {seconds / later:.2f}"
            for label, seconds in list(run.cpu_by_process.items())[:6]
        )
        print(f"  CPU s per later round, {run.engine}: {top}")
    if len(runs) >= 2:
        framework, plain = runs[0], runs[-1]
        ratios = overhead_ratios(framework, plain)
        print(
            f"  overhead ratio {framework.engine} / {plain.engine}:\n"
            f"    wall, rounds after the first {ratios['overhead-ratio']:.3f}; "
            f"every round {ratios['overhead-ratio-all-rounds']:.3f}; "
            f"whole run {ratios['overhead-ratio-whole-run']:.3f}; "
            f"CPU, rounds after the first {ratios['overhead-ratio-cpu']:.3f}"
        )


def overhead_ratios(framework: EngineRun, plain: EngineRun) -> dict[str, float]:
    """Framework over plain loop: wall time per round once running (the headline),
    over every round, over the whole command (start-up included), and CPU time per
    round once running (what the framework adds in work, whatever the machine's
    load)."""
    return {
        "overhead-ratio": round(
            framework.steady_seconds_per_round / plain.steady_seconds_per_round, 3
        ),
        "overhead-ratio-all-rounds": round(
            framework.seconds_per_round / plain.seconds_per_round, 3
        ),
        "overhead-ratio-whole-run": round(
            framework.wall_seconds / plain.wall_seconds, 3
        ),
        "overhead-ratio-cpu": round(
            framework.steady_cpu_seconds_per_round / plain.steady_cpu_seconds_per_round,
            3,
        ),
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(plan: Plan, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Every part of the benchmark at the plan's sizes; the JSON report."""
    report: dict[str, Any] = {
        "merchants": plan.merchants,
        "per-round": plan.per_round,
        "rounds": plan.rounds,
        "codec": plan.codec,
        "machine": {"cores": os.cpu_count(), "load-average-at-start": _load()},
        "plan": asdict(plan),
    }

    # Bytes of every codec on the serialised reply, and what they cost in quality.
    if "codecs" not in skip:
        report["codecs"] = codec_bytes(plan.codec_merchants)
        print("\nscale: bytes per update, on the serialised Flower reply")
        for row in report["codecs"]:
            print(
                f"  {row['codec']:<16} {row['bytes-per-update']:>12,.0f} B   "
                f"{row['ratio-vs-float32']:>7.2f}x smaller than float32"
            )
    if "quality" not in skip:
        quality = synthetic_codec_quality(
            plan.quality_merchants, plan.quality_rounds, plan.quality_seeds
        )
        report["codec-quality"] = quality
        print(
            f"\nscale: cold-start NDCG@10 by codec ({plan.quality_merchants} "
            f"merchants, {plan.quality_rounds} rounds, {plan.quality_seeds} seeds)"
        )
        for row in quality:
            change = row.get("relative-ndcg@10-change", 0.0)
            print(f"  {row['codec']:<16} {row['ndcg@10']:.4f}   {change:+.2%}")
        by_codec = {row["codec"]: row for row in quality}
        for row in report.get("codecs", []):
            if row["codec"] in by_codec:
                row["relative-ndcg@10-change"] = by_codec[row["codec"]].get(
                    "relative-ndcg@10-change"
                )

    # The federation at scale: Flower's simulation engine beside the plain loop.
    if "flower" not in skip:
        flower = run_flower_simulation(
            plan.merchants, plan.per_round, plan.rounds, plan.codec, plan.workers
        )
        plain = run_plain_loop(
            plan.merchants, plan.per_round, plan.rounds, plan.codec, plan.workers
        )
        _print_engines(
            f"{plan.merchants} merchants, {plan.per_round} a round, "
            f"{plan.rounds} rounds",
            [flower, plain],
        )
        report.update(
            {
                "seconds-per-round": round(flower.seconds_per_round, 3),
                "steady-seconds-per-round": round(flower.steady_seconds_per_round, 3),
                "updates-per-second": flower.summary()["updates-per-second"],
                "steady-updates-per-second": flower.summary()[
                    "steady-updates-per-second"
                ],
                **overhead_ratios(flower, plain),
                "peak-rss-mb": flower.memory["peak-rss-mb"],
                "peak-pss-mb": flower.memory["peak-pss-mb"],
                "simulation": flower.summary(),
                "plain-loop": plain.summary(),
            }
        )

    # The deployment engine at a small size, beside the plain loop at that size.
    if plan.deployment_merchants and "deployment" not in skip:
        deployed = run_deployment(
            plan.deployment_merchants, plan.deployment_rounds, plan.codec
        )
        plain_small = run_plain_loop(
            plan.deployment_merchants,
            plan.deployment_merchants,
            plan.deployment_rounds,
            plan.codec,
            plan.workers,
        )
        _print_engines(
            f"deployment engine, {plan.deployment_merchants} merchants on loopback",
            [deployed, plain_small],
        )
        report["deployment"] = {
            **deployed.summary(),
            **overhead_ratios(deployed, plain_small),
            "plain-loop": plain_small.summary(),
        }

    # What a new merchant pays to adapt.
    if "adaptation" not in skip:
        report["adaptation"] = adaptation_cost(plan.adaptation_repeats)
        cost = report["adaptation"]
        print(
            f"\nscale: a new merchant adapts on {cost['support-interactions']} "
            f"interactions, one core: {cost['adapt-seconds-median']:.3f}s "
            f"(first in a fresh process {cost['first-adapt-seconds']:.2f}s), "
            f"peak RSS {cost['peak-rss-mb']:.0f} MB "
            f"(+{cost['adapt-extra-mb']:.0f} MB while adapting)"
        )
    report["machine"]["load-average-at-end"] = _load()
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, ~1 minute")
    parser.add_argument("--out", default="scale.json", help="JSON report")
    parser.add_argument(
        "--workers", type=int, default=2, help="Ray workers and plain-loop processes"
    )
    parser.add_argument(
        "--codec",
        default="float32",
        choices=CODECS,
        help="how merchants encode deltas in the timed runs",
    )
    parser.add_argument("--deployment-merchants", type=int, default=4)
    parser.add_argument("--deployment-rounds", type=int, default=2)
    parser.add_argument("--codec-merchants", type=int, default=10)
    parser.add_argument("--quality-merchants", type=int, default=24)
    parser.add_argument("--quality-rounds", type=int, default=20)
    parser.add_argument(
        "--skip",
        default="",
        help="parts to leave out: codecs,quality,flower,deployment,adaptation",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its figures, write the JSON."""
    args = parse_args(argv)
    plan = plan_for(args)
    skip = [part.strip() for part in args.skip.split(",") if part.strip()]
    started = time.perf_counter()
    report = run(plan, skip)
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nscale: done in {report['seconds']:.0f}s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
