"""Real deployments on 127.0.0.1: TLS, authenticated merchants, faults, resume.

Each test drives real ``flower-superlink``, ``flower-supernode`` and ``flwr run``
processes (see ``conftest.py``). Every wait is bounded; nothing asserts on time.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from client.tools import adapt_command, recommend_command
from server.checkpoint import load_checkpoint
from server.store import RoundStore
from simulations.deployment import wait_for
from tests.deployment.conftest import (
    BAD,
    BASE_RUN_CONFIG,
    GOOD,
    ONLINE_TIMEOUT,
    RUN_TIMEOUT,
    Federation,
)

pytestmark = pytest.mark.integration

# New customers appended to m0's log after round 1: each has 6 distinct items, so
# the leave-one-out split keeps 6 - 2 = 4 support interactions of each.
NEW_CUSTOMERS = 5
NEW_ITEMS_EACH = 6


class CheckpointWatcher(threading.Thread):
    """Reads RUN_DIR/checkpoint.npz whenever it changes; calls ``on_round`` once per
    newly seen round, right away (the next round's merchants are still starting)."""

    def __init__(
        self, run_dir: Path, on_round: Callable[[int], None] | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.path = run_dir / "checkpoint.npz"
        self.run_dir = run_dir
        self.on_round = on_round
        self.seen: dict[int, dict[str, np.ndarray]] = {}
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def run(self) -> None:
        stamp = None
        while not self._halt.is_set():
            try:
                status = self.path.stat()
                if (status.st_mtime_ns, status.st_ino) != stamp:
                    stamp = (status.st_mtime_ns, status.st_ino)
                    checkpoint = load_checkpoint(self.run_dir)
                    assert checkpoint is not None
                    if checkpoint.server_round not in self.seen:
                        self.seen[checkpoint.server_round] = checkpoint.parameters
                        if self.on_round is not None:
                            self.on_round(checkpoint.server_round)
            except FileNotFoundError:
                pass
            except BaseException as error:  # reported by the test, not lost
                self.errors.append(error)
            time.sleep(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def store_rounds(run_dir: Path) -> tuple[list[dict[str, Any]], dict[int, list[dict]]]:
    """The recorded rounds and each round's merchant outcomes."""
    store = RoundStore.open_read_only(run_dir / "rounds.sqlite")
    try:
        rounds = [row for row in store.rounds() if row["sampled"] is not None]
        outcomes = {row["round"]: store.round_merchants(row["round"]) for row in rounds}
    finally:
        store.close()
    return rounds, outcomes


def by_merchant(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["merchant_id"]: row for row in outcomes}


def start_merchant_count(federation: Federation, name: str) -> int:
    """How many ClientApp processes merchant ``name`` has started so far."""
    process = federation.deployment.processes[f"merchant-{name}"]
    return process.text().count("Start `flwr-clientapp` process")


# ---------------------------------------------------------------------------
# A fresh run: three merchants, two rounds, intruders knocking, data changing
# ---------------------------------------------------------------------------


@dataclass
class FreshRun:
    run_dir: Path
    exit_code: int
    log: str
    checkpoints: dict[int, dict[str, np.ndarray]]
    intruders: dict[str, tuple[int, str]] = field(default_factory=dict)
    appended_at_round: int | None = None


def append_new_customers(path: Path) -> None:
    """Add NEW_CUSTOMERS customers with NEW_ITEMS_EACH distinct known items each."""
    log = pd.read_csv(path, dtype={"user": str, "item": str})
    items = sorted(log["item"].unique())[:NEW_ITEMS_EACH]
    rows = [
        (f"late-{customer}", item, 2000 + position)
        for customer in range(NEW_CUSTOMERS)
        for position, item in enumerate(items)
    ]
    added = pd.DataFrame(rows, columns=["user", "item", "time"])
    pd.concat([log, added]).to_csv(path, index=False)


@pytest.fixture(scope="module")
def fresh_run(federation: Federation) -> Iterator[FreshRun]:
    """Run two rounds from a fresh state while an unregistered merchant and a
    plaintext merchant try to join, and m0's log grows after round 1."""
    deployment = federation.deployment
    run_dir = federation.run_dir("fresh")
    m0_log = Path(federation.data["m0"]["data-path"])
    appended: list[int] = []

    def grow_m0(server_round: int) -> None:
        if server_round == 1:
            append_new_customers(m0_log)
            appended.append(server_round)

    # Intruders: a key the operator never registered, and a plaintext connection.
    deployment.start_merchant(
        "intruder", federation.data["m1"], key=federation.keys["intruder"]
    )
    deployment.start_merchant(
        "plaintext",
        federation.data["m1"],
        insecure=True,
        extra=["--max-retries", "3", "--max-wait-time", "30"],
    )

    watcher = CheckpointWatcher(run_dir, on_round=grow_m0)
    watcher.start()
    try:
        deployment.start_run("run-fresh", {**BASE_RUN_CONFIG, "run-dir": str(run_dir)})
        code = deployment.wait_exit("run-fresh", RUN_TIMEOUT)
        intruders = {}
        for name in ("intruder", "plaintext"):
            process = deployment.processes[f"merchant-{name}"]
            intruders[name] = (deployment.wait_exit(process.name, 60), process.text())
    finally:
        watcher.stop()
    assert not watcher.errors, watcher.errors
    yield FreshRun(
        run_dir,
        code,
        deployment.processes["run-fresh"].text(),
        watcher.seen,
        intruders,
        appended[0] if appended else None,
    )


def test_three_authenticated_merchants_complete_two_rounds(fresh_run: FreshRun) -> None:
    # Prepare / Execute: the fresh_run fixture ran the federation.
    rounds, outcomes = store_rounds(fresh_run.run_dir)

    # Assert: the run ended well, every round had all three merchants.
    assert fresh_run.exit_code == 0, fresh_run.log[-3000:]
    assert [row["round"] for row in rounds] == [1, 2]
    for row in rounds:
        assert (row["sampled"], row["replied"], row["failed"]) == (3, 3, 0)
        assert sorted(by_merchant(outcomes[row["round"]])) == sorted(GOOD)

    # The checkpoint advanced after each round, and θ moved each time.
    assert sorted(fresh_run.checkpoints) == [1, 2]
    first, second = fresh_run.checkpoints[1], fresh_run.checkpoints[2]
    moved = sum(float(np.abs(second[k] - first[k]).sum()) for k in first)
    assert moved > 0.0
    final = load_checkpoint(fresh_run.run_dir)
    assert final is not None and final.server_round == 2
    assert final.meta["run-config"]["embedding-dim"] == BASE_RUN_CONFIG["embedding-dim"]


def test_unregistered_and_plaintext_merchants_are_refused(
    fresh_run: FreshRun,
) -> None:
    # Prepare / Execute: both intruders tried to join during the fresh run.
    unregistered_code, unregistered_log = fresh_run.intruders["intruder"]
    plaintext_code, plaintext_log = fresh_run.intruders["plaintext"]
    _, outcomes = store_rounds(fresh_run.run_dir)

    # Assert: each was turned away at connection and never took part.
    assert unregistered_code != 0
    assert "Failed to activate SuperNode" in unregistered_log
    assert plaintext_code != 0
    assert "Failed to initialize the connection" in plaintext_log
    assert "SuperNode ID:" not in unregistered_log + plaintext_log
    for round_outcomes in outcomes.values():
        assert set(by_merchant(round_outcomes)) == set(GOOD)
    assert fresh_run.exit_code == 0


def test_new_data_is_used_by_the_next_round(fresh_run: FreshRun) -> None:
    # Prepare / Execute: m0's log grew right after round 1's checkpoint was written.
    _, outcomes = store_rounds(fresh_run.run_dir)
    before = by_merchant(outcomes[1])["m0"]["num_examples"]
    after = by_merchant(outcomes[2])["m0"]["num_examples"]

    # Assert: round 2 trained on the new customers, with nothing restarted.
    assert fresh_run.appended_at_round == 1
    assert after - before == NEW_CUSTOMERS * (NEW_ITEMS_EACH - 2)
    for other in ("m1", "m2"):
        assert (
            by_merchant(outcomes[1])[other]["num_examples"]
            == by_merchant(outcomes[2])[other]["num_examples"]
        )


def test_new_merchant_adapts_and_recommends_from_the_checkpoint(
    fresh_run: FreshRun, tmp_path: Path
) -> None:
    # Prepare: a merchant that never took part, with its own order log.
    from common.synthetic import new_merchants

    log = new_merchants(0)[0].interactions[["user", "item", "time"]]
    data = tmp_path / "newcomer.csv"
    log.to_csv(data, index=False)
    model = tmp_path / "model.npz"
    recommendations = tmp_path / "recs.csv"

    # Execute: the two merchant commands (what `merchant-meta adapt` / `recommend` run).
    adapt_command(checkpoint=fresh_run.run_dir / "checkpoint.npz", data=data, out=model)
    recommend_command(model=model, data=data, out=recommendations, n=10)

    # Assert: ten distinct catalogue items per customer, none already bought.
    lists = pd.read_csv(recommendations, dtype={"user": str, "item": str})
    owned = log.groupby("user")["item"].apply(set)
    catalogue = set(log["item"])
    assert set(lists["user"]) == set(owned.index)
    for user, rows in lists.groupby("user"):
        assert list(rows["rank"]) == list(range(1, 11))
        assert len(set(rows["item"])) == 10
        assert set(rows["item"]) <= catalogue - owned[user]
        assert rows["score"].is_monotonic_decreasing


# ---------------------------------------------------------------------------
# A merchant killed mid-round: the round falls short, is retried, it rejoins
# ---------------------------------------------------------------------------


def test_merchant_killed_mid_round_is_retried_when_it_returns(
    federation: Federation,
) -> None:
    # Prepare: every round needs all three merchants.
    deployment = federation.deployment
    run_dir = federation.run_dir("killed-merchant")
    config = {**BASE_RUN_CONFIG, "run-dir": str(run_dir), "min-train-merchants": 3}
    started = start_merchant_count(federation, "m2")

    # Execute: kill m2 while its ClientApp trains in round 1, bring it back once the
    # server has seen the round fall short.
    deployment.start_run("run-killed", config)
    wait_for(
        lambda: start_merchant_count(federation, "m2") > started,
        RUN_TIMEOUT,
        "m2 training in round 1",
    )
    deployment.stop("merchant-m2")
    deployment.wait_log("run-killed", r"round 1: \d+ valid replies.*retrying", 300)
    federation.start_merchant("m2")
    deployment.wait_online(["m2"], ONLINE_TIMEOUT)
    code = deployment.wait_exit("run-killed", RUN_TIMEOUT)
    log = deployment.processes["run-killed"].text()

    # Assert: the first attempt had two valid replies; the retry had all three, and
    # round 2 went on with m2 back.
    assert code == 0, log[-3000:]
    short = re.search(r"round 1: (\d+) valid replies of 3 needed", log)
    assert short is not None and short.group(1) == "2"
    rounds, outcomes = store_rounds(run_dir)
    assert [row["round"] for row in rounds] == [1, 2]
    for row in rounds:
        assert row["replied"] == 3
        assert by_merchant(outcomes[row["round"]])["m2"]["status"] == "replied"
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.server_round == 2


# ---------------------------------------------------------------------------
# Bad merchant data, and the server side killed mid-run then resumed
# ---------------------------------------------------------------------------


@dataclass
class ResumedRun:
    run_dir: Path
    second_log: str
    second_code: int
    rounds: list[dict[str, Any]]
    outcomes: dict[int, list[dict[str, Any]]]
    round_one_at_kill: int


@pytest.fixture(scope="module")
def resumed_run(federation: Federation) -> Iterator[ResumedRun]:
    """The SuperLink and the ServerApp are killed (SIGKILL) right after round 1 is
    checkpointed, then restarted on the same state database and run directory; three
    merchants with bad data join for the resumed round."""
    deployment = federation.deployment
    run_dir = federation.run_dir("resumed")
    config = {**BASE_RUN_CONFIG, "run-dir": str(run_dir), "round-retries": 0}
    try:
        watcher = CheckpointWatcher(run_dir)
        watcher.start()
        try:
            deployment.start_run("run-resume-1", config)
            wait_for(lambda: 1 in watcher.seen, RUN_TIMEOUT, "round 1 checkpoint")
        finally:
            watcher.stop()

        # Kill the server side mid-run: SuperLink, SuperExec and ServerApp together.
        deployment.stop("superlink", sig=9)
        deployment.stop("run-resume-1")
        checkpoint = load_checkpoint(run_dir)
        assert checkpoint is not None
        at_kill = checkpoint.server_round

        # Restart on the same database and run directory; merchants reconnect, and
        # the bad ones join.
        deployment.start_superlink()
        wait_for(deployment.healthy, 60.0, "healthy SuperLink after restart")
        for name in BAD:
            federation.start_merchant(name)
        deployment.wait_online(list(BAD), ONLINE_TIMEOUT)
        deployment.start_run("run-resume-2", config)
        code = deployment.wait_exit("run-resume-2", RUN_TIMEOUT)
    finally:
        for name in BAD:
            if f"merchant-{name}" in deployment.processes:
                deployment.stop(f"merchant-{name}")
    rounds, outcomes = store_rounds(run_dir)
    yield ResumedRun(
        run_dir,
        deployment.processes["run-resume-2"].text(),
        code,
        rounds,
        outcomes,
        at_kill,
    )


def test_bad_merchant_data_fails_with_merchant_id_and_run_goes_on(
    resumed_run: ResumedRun,
) -> None:
    # Prepare / Execute: the resumed round 2 had three merchants with bad data.
    outcomes = by_merchant(resumed_run.outcomes[2])
    expected = {
        "b-missing": "no column 'time'",
        "b-empty": "empty file",
        "b-unreadable": "cannot read the file",
    }

    # Assert: each failed with its own reason, under its own id, in the store and in
    # the server's log; the three good merchants were aggregated.
    for name, reason in expected.items():
        assert outcomes[name]["status"] == "failed"
        assert f"merchant {name}: " in outcomes[name]["reason"]
        assert reason in outcomes[name]["reason"]
        assert re.search(
            f"WARNING .*round 2: merchant {name} failed: .*{re.escape(reason)}",
            resumed_run.second_log,
        )
    assert sorted(m for m, o in outcomes.items() if o["status"] == "replied") == sorted(
        GOOD
    )
    assert (resumed_run.rounds[1]["replied"], resumed_run.rounds[1]["failed"]) == (3, 3)


def test_server_killed_mid_run_resumes_at_the_next_round(
    resumed_run: ResumedRun,
) -> None:
    # Prepare / Execute: the server side was killed after round 1's checkpoint.
    rounds = resumed_run.rounds

    # Assert: the restart resumed at round 2 from the round 1 checkpoint, and each
    # round is recorded exactly once.
    assert resumed_run.round_one_at_kill == 1
    assert "resume:" in resumed_run.second_log
    assert re.search(r"resume: .* at round 2 of 2", resumed_run.second_log)
    assert resumed_run.second_code == 0, resumed_run.second_log[-3000:]
    assert [row["round"] for row in rounds] == [1, 2]
    assert rounds[1]["replied"] == 3
    checkpoint = load_checkpoint(resumed_run.run_dir)
    assert checkpoint is not None and checkpoint.server_round == 2
