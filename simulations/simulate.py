"""The main job: a local federated Reptile simulation on Flower's simulation engine.

    python -m simulations.simulate                       # embedded synthetic data
    python -m simulations.simulate --rounds 5 --merchants 12
    python -m simulations.simulate --data ../shared/data/xmarket --format xmarket \\
        --targets mx --merchants-per-market 2

It runs ``flwr run .`` against a private local SuperLink (its own FLWR_HOME and ports,
telemetry and update checks off, runtime dependency installation off), shows one line
per round, stops the SuperLink it started, and prints where the run directory and the
report are.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUND_LINE = re.compile(
    r"(round \d+/\d+:|resume:|done:|evaluate:|WARNING|ERROR|Traceback)"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower commands: private home and ports, nothing online."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        # flwr starts flower-superlink and flwr-serverapp by name: use this venv's.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def stop_local_superlink(env: dict[str, str], grace: float = 10.0) -> None:
    """Stop the detached SuperLink that ``flwr run`` started for this FLWR_HOME, and
    everything in its process group (the simulation process and Ray's daemons):
    SIGTERM, then SIGKILL for what is still there after ``grace`` seconds."""
    port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in arguments]
        if any(w.endswith("flower-superlink") for w in words[:2]) and port in words:
            try:
                groups.add(os.getpgid(int(entry.name)))
            except ProcessLookupError:
                continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        deadline = time.monotonic() + grace
        while groups and time.monotonic() < deadline:
            groups = {g for g in groups if _group_alive(g)}
            time.sleep(0.2)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def render(value: str | int | float | bool) -> str:
    """A value for ``--run-config`` (TOML: quoted strings, lower-case booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "") + "'"
    return str(value)


def run_flower(
    run_config: Mapping[str, str | int | float | bool],
    num_merchants: int,
    verbose: bool = False,
    timeout: float = 3600.0,
    flwr_home: Path | None = None,
) -> int:
    """``flwr run .`` with ``run_config``; returns the command's exit code."""
    home = flwr_home or Path(tempfile.mkdtemp(prefix="merchant-meta-flwr-"))
    env = flower_environment(home)
    overrides = " ".join(f"{key}={render(value)}" for key, value in run_config.items())
    command = [
        str(Path(sys.executable).with_name("flwr")),
        "run",
        str(ROOT),
        "--stream",
        "--run-config",
        overrides,
        "--federation-config",
        f"num-supernodes={num_merchants} client-resources-num-cpus=1",
    ]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if verbose or ROUND_LINE.search(line):
                print(line.rstrip(), flush=True)
            if time.monotonic() > deadline:
                print(f"simulate: no result after {timeout:.0f}s, stopping", flush=True)
                process.terminate()
                break
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        stop_local_superlink(env)


def parse_value(text: str) -> str | int | float:
    """A run-config value typed as Flower expects: int, float, or string."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text.strip("'\"")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default: pyproject)"
    )
    parser.add_argument(
        "--merchants", type=int, default=24, help="simulated merchants (synthetic)"
    )
    parser.add_argument(
        "--data", default="", help="data directory or file (default: synthetic)"
    )
    parser.add_argument(
        "--format", default="synthetic", choices=["synthetic", "xmarket", "table"]
    )
    parser.add_argument("--sources", default="", help="source markets (real data)")
    parser.add_argument(
        "--targets", default="", help="held-out new markets (real data)"
    )
    parser.add_argument("--merchants-per-market", type=int, default=1)
    parser.add_argument(
        "--run-dir", default="", help="run directory (default: runs/<time>)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key of pyproject.toml, e.g. --set inner-steps=10",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show Flower's own log lines"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation; print the run directory and the report."""
    args = parse_args(argv)
    run_dir = Path(
        args.run_dir or ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
    ).resolve()
    run_config: dict[str, str | int | float] = {
        "run-dir": str(run_dir),
        "seed": args.seed,
    }
    if args.rounds is not None:
        run_config["num-rounds"] = args.rounds
    num_merchants = args.merchants
    if args.format != "synthetic":
        from common.config import DataConfig
        from common.federation import source_merchants

        run_config.update(
            {
                "data-format": args.format,
                "data-path": str(Path(args.data).resolve()),
                "source-markets": args.sources,
                "target-markets": args.targets,
                "merchants-per-market": args.merchants_per_market,
            }
        )
        data = DataConfig(
            data_format=args.format,
            data_path=str(Path(args.data).resolve()),
            source_markets=tuple(m for m in args.sources.split(",") if m),
            target_markets=tuple(m for m in args.targets.split(",") if m),
            merchants_per_market=args.merchants_per_market,
            seed=args.seed,
        )
        num_merchants = len(source_merchants(data))
    for item in args.set:
        key, _, value = item.partition("=")
        run_config[key.strip()] = parse_value(value.strip())

    print(f"simulate: {num_merchants} merchants, run directory {run_dir}", flush=True)
    started = time.monotonic()
    code = run_flower(run_config, num_merchants, verbose=args.verbose)
    report = run_dir / "report.md"
    if code != 0 or not report.exists():
        print(
            f"simulate: flwr run failed (exit {code}); rerun with --verbose", flush=True
        )
        return code or 1
    print(f"simulate: finished in {time.monotonic() - started:.0f}s", flush=True)
    print(f"simulate: run directory {run_dir}", flush=True)
    print(f"simulate: report {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
