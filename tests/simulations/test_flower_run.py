"""A real ``flwr run`` through Flower's simulation engine, and the in-process engine.

One simulation of four synthetic merchants for two rounds serves both tests: that the
run completes end to end (checkpoint, round store, report), and that the in-process
engine computes the same θ for the same seed.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import from_run_config
from common.federation import source_merchants
from server.checkpoint import load_checkpoint
from server.store import RoundStore
from simulations.inprocess import run_inprocess
from simulations.simulate import ROOT, run_flower

pytestmark = pytest.mark.integration

MERCHANTS = 4
OVERRIDES: dict[str, Any] = {
    "num-rounds": 2,
    "num-buckets": 512,
    "embedding-dim": 8,
    "inner-steps": 5,
    "batch-size": 32,
    "eval-every": 2,
    "eval-seeds": 1,
    "adapt-steps": 5,
    "seed": 3,
}


def _run_config(run_dir: Path) -> dict[str, Any]:
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]
    return {**defaults["app"]["config"], **OVERRIDES, "run-dir": str(run_dir)}


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the simulation once, with Flower's home, HOME and TMPDIR in tmp."""
    base = tmp_path_factory.mktemp("flower-run")
    run_dir = base / "run"
    # Ray's socket paths must fit in 107 bytes: a short TMPDIR directly under /tmp.
    short_tmp = Path(tempfile.mkdtemp(prefix="mm-", dir="/tmp"))
    patch = pytest.MonkeyPatch()
    (base / "home").mkdir()
    patch.setenv("HOME", str(base / "home"))
    patch.setenv("TMPDIR", str(short_tmp))
    try:
        overrides = {**OVERRIDES, "run-dir": str(run_dir)}
        code = run_flower(overrides, MERCHANTS, timeout=900, flwr_home=base / "flwr")
    finally:
        patch.undo()
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert code == 0, f"flwr run exited with {code}"
    return run_dir


def test_a_flower_simulation_runs_two_rounds_end_to_end(flower_run: Path) -> None:
    # Execute: (the fixture ran it)
    checkpoint = load_checkpoint(flower_run)
    store = RoundStore.open_read_only(flower_run / "rounds.sqlite")
    rounds = [row for row in store.rounds() if row["round"] > 0]

    # Assert: both rounds completed with every merchant, and the report was written.
    assert checkpoint is not None and checkpoint.server_round == 2
    assert [row["round"] for row in rounds] == [1, 2]
    assert all(row["replied"] == MERCHANTS and row["rejected"] == 0 for row in rounds)
    assert store.run_info()["status"] == "finished"
    report = (flower_run / "report.md").read_text()
    assert "Cold start on held-out new merchants" in report
    assert (flower_run / "cold_start.png").stat().st_size > 0


def test_the_inprocess_engine_gives_the_same_theta(flower_run: Path) -> None:
    # Prepare: the same run configuration the ServerApp and ClientApps parsed.
    config = from_run_config(_run_config(flower_run))
    merchants = source_merchants(config.data, MERCHANTS)

    # Execute
    result = run_inprocess(config, merchants)

    # Assert: θ after two rounds matches array by array.
    checkpoint = load_checkpoint(flower_run)
    assert checkpoint is not None
    assert set(result.parameters) == set(checkpoint.parameters)
    for name, array in result.parameters.items():
        np.testing.assert_allclose(
            checkpoint.parameters[name], array, rtol=0, atol=1e-6, err_msg=name
        )
