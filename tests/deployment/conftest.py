"""A real deployment shared by the deployment tests: SuperLink, merchants, keys, data.

One SuperLink with TLS, merchant authentication and a state database is started once
per test session on a free port of 127.0.0.1, with three registered merchants online
(two synthetic order logs as CSV and a subset of a real XMarket market). Keys for the
merchants with bad data are registered up front too (registration costs a few seconds
of ``flwr`` start-up each), and a key that is never registered is made for the
intruder. Every process is stopped by process group in the finaliser.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common import synthetic
from simulations.deployment import LocalDeployment, wait_for

XMARKET = Path(__file__).resolve().parents[3] / "shared" / "data" / "xmarket"
GOOD = ("m0", "m1", "m2")
BAD = ("b-missing", "b-empty", "b-unreadable")

# Small model and inner loop: the tests are about processes, not about learning.
BASE_RUN_CONFIG: dict[str, str | int | float | bool] = {
    "num-rounds": 2,
    "server-eval": False,
    "inner-steps": 5,
    "embedding-dim": 16,
    "num-buckets": 1024,
    "min-train-merchants": 2,
    "round-timeout": 150.0,
    "round-retries": 2,
}
ONLINE_TIMEOUT = 120.0
RUN_TIMEOUT = 480.0


def write_synthetic_merchant(path: Path, index: int) -> pd.DataFrame:
    """A synthetic source merchant's log as a CSV with columns user, item, time."""
    merchant = synthetic.source_merchants(0, index + 1)[index]
    frame = merchant.interactions[["user", "item", "time"]]
    frame.to_csv(path, index=False)
    return frame


def write_xmarket_subset(path: Path, market: str = "mx", users: int = 150) -> int:
    """The first ``users`` customers of a real XMarket market, in its own format."""
    frame = pd.read_csv(XMARKET / f"{market}_5core.txt", sep=" ", dtype=str)
    kept = frame["userId"].drop_duplicates().iloc[:users]
    subset = frame.loc[frame["userId"].isin(kept)]
    subset.to_csv(path, sep=" ", index=False)
    return len(subset)


def write_bad_files(directory: Path) -> dict[str, Path]:
    """A log without its time column, an empty file, and one that is not text."""
    directory.mkdir(parents=True, exist_ok=True)
    missing = directory / "missing_time.csv"
    missing.write_text("user,item\nu1,P1\nu1,P2\nu1,P3\n")
    empty = directory / "empty.csv"
    empty.write_bytes(b"")
    unreadable = directory / "unreadable.csv"
    unreadable.write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 4096)))
    return {"b-missing": missing, "b-empty": empty, "b-unreadable": unreadable}


@dataclass
class Federation:
    """The shared deployment and what each merchant holds."""

    deployment: LocalDeployment
    data: dict[str, dict[str, str]] = field(default_factory=dict)
    keys: dict[str, Path] = field(default_factory=dict)
    online_seconds: dict[str, float] = field(default_factory=dict)

    def start_merchant(self, name: str) -> None:
        """Start (or restart) a registered merchant with its data."""
        self.deployment.start_merchant(name, self.data[name], key=self.keys[name])

    def run_dir(self, name: str) -> Path:
        return self.deployment.root / "runs" / name


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Three registered merchants online behind a TLS + authentication SuperLink."""
    logging.getLogger("simulations.deployment").setLevel(logging.INFO)
    root = tmp_path_factory.mktemp("deployment")
    deployment = LocalDeployment(root)
    federation = Federation(deployment)
    try:
        # Operator: certificates, the SuperLink, the merchants' registered keys.
        deployment.make_certificates()
        deployment.start_superlink()
        public_keys = {}
        for name in (*GOOD, *BAD, "intruder"):
            private, public = deployment.make_merchant_key(name)
            federation.keys[name] = private
            public_keys[name] = public
        wait_for(deployment.healthy, 60.0, "healthy SuperLink")
        deployment.register({n: k for n, k in public_keys.items() if n != "intruder"})

        # Merchants: two synthetic order logs and a subset of a real market.
        data_dir = root / "data"
        data_dir.mkdir()
        for index, name in enumerate(GOOD[:2]):
            path = data_dir / f"{name}.csv"
            write_synthetic_merchant(path, index)
            federation.data[name] = {"data-path": str(path), "data-format": "table"}
        mx = data_dir / "mx_5core.txt"
        write_xmarket_subset(mx)
        federation.data["m2"] = {"data-path": str(mx), "data-format": "xmarket"}
        for name, path in write_bad_files(data_dir / "bad").items():
            federation.data[name] = {"data-path": str(path), "data-format": "table"}

        for name in GOOD:
            federation.start_merchant(name)
        federation.online_seconds = deployment.wait_online(list(GOOD), ONLINE_TIMEOUT)
        yield federation
    finally:
        deployment.stop_all()
