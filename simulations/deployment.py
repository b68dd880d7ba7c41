"""A real deployment on this machine: one SuperLink, one SuperNode per merchant.

This scripts the runbook's commands (README, "Deployment runbook") on 127.0.0.1 with
free ports and private directories, for the deployment tests and the timing script:
TLS with a CA made by ``server.certs``, merchant authentication with registered keys,
a state database, each merchant's data path and id in its node config, and ``flwr
run`` against the SuperLink through a connection in a private ``FLWR_HOME``.

Every process is started in its own process group and stopped by group, so the
``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` processes Flower starts
underneath go with it. Plaintext or unauthenticated processes are started only when
asked with ``insecure=True``, and each such start logs a WARNING.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.launch import flower_executable, node_config_text, supernode_argv
from server import certs
from server.launch import superlink_argv
from simulations.simulate import free_port

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTION = "deployment"
ONLINE_MARK = "SuperNode ID:"


def run_config_text(values: Mapping[str, str | int | float | bool]) -> str:
    """``--run-config`` text: strings quoted, numbers and booleans bare."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = str(value)
        else:
            text = "'" + str(value).replace("'", "") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, every: float = 0.2
) -> Any:
    """Poll ``check`` until it returns something true; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"wait: no {what} after {timeout:.0f}s")
        time.sleep(every)


@dataclass
class Process:
    """A process this deployment started, its log file and when it started."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float

    def text(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class LocalDeployment:
    """A SuperLink and merchants' SuperNodes under ``root``, all on 127.0.0.1."""

    root: Path
    port: int = field(default_factory=free_port)
    processes: dict[str, Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        for name in ("certs", "operator", "superlink", "home", "tmp", "logs"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    # -- paths and environment ----------------------------------------------------

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def database(self) -> Path:
        return self.root / "superlink" / "state.db"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def environment(self, flwr_home: Path) -> dict[str, str]:
        """Private homes and temp dir, nothing online, this venv's Flower first."""
        flwr_home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(flwr_home),
            HOME=str(self.root / "home"),
            TMPDIR=str(self.root / "tmp"),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PYTHONUNBUFFERED="1",
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        return env

    # -- processes ----------------------------------------------------------------

    def start(self, name: str, command: list[str], flwr_home: Path) -> Process:
        """Start ``command`` in a new process group, output to ``logs/NAME.log``."""
        if name in self.processes and self.processes[name].alive():
            raise RuntimeError(f"start: {name} is already running")
        log = self.root / "logs" / f"{name}.log"
        with log.open("ab") as output:
            popen = subprocess.Popen(
                command,
                env=self.environment(flwr_home),
                cwd=ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, popen, log, time.monotonic())
        self.processes[name] = process
        logger.debug("start: %s (pid %d): %s", name, popen.pid, " ".join(command))
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process group of ``name``; escalate to SIGKILL; its exit code."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, sig)
        try:
            return process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.popen.pid, signal.SIGKILL)
            return process.popen.wait(timeout=timeout)
        finally:
            self._reap_group(process.popen.pid)

    def _reap_group(self, group: int) -> None:
        """SIGKILL whatever is left of a process group (children outliving a parent)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every process this deployment started, merchants first."""
        names = sorted(self.processes, key=lambda n: n == "superlink")
        for name in names:
            self.stop(name, timeout=15.0)

    # -- operator side ------------------------------------------------------------

    def make_certificates(self) -> None:
        """The CA and the SuperLink's certificate for 127.0.0.1 and localhost."""
        files = certs.authority_files(["127.0.0.1", "localhost"], self.certs, days=2)
        certs.write_files(files, force=True)

    def make_merchant_key(self, name: str) -> tuple[Path, Path]:
        """A merchant's key pair: (private key, public key)."""
        files = certs.merchant_key_files(name, self.certs / "merchants")
        certs.write_files(files, force=True)
        return files[0].path, files[1].path

    def start_superlink(self, insecure: bool = False) -> Process:
        """The SuperLink with TLS, merchant authentication and a state database:
        the command ``merchant-meta superlink`` runs."""
        command = superlink_argv(
            self.certs, self.database, "127.0.0.1", self.port, insecure
        )
        process = self.start("superlink", command, self.root / "superlink")
        self._write_connection(insecure)
        return process

    def healthy(self) -> bool:
        """Whether the SuperLink answers GET /health over TLS."""
        context = ssl.create_default_context(cafile=str(self.certs / certs.CA_CERT))
        try:
            with urllib.request.urlopen(
                f"https://{self.address}/health", context=context, timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _write_connection(self, insecure: bool) -> None:
        ca = self.certs / certs.CA_CERT
        security = "insecure = true" if insecure else f'root-certificates = "{ca}"'
        (self.root / "operator" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n{security}\n'
        )

    def flwr(self, *arguments: str, timeout: float = 120.0) -> str:
        """Run an operator ``flwr`` command on this deployment's connection."""
        result = subprocess.run(
            [str(BIN / "flwr"), *arguments],
            env=self.environment(self.root / "operator"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"flwr {' '.join(arguments)}: exit {result.returncode}: "
                f"{result.stdout[-2000:]} {result.stderr[-2000:]}"
            )
        return result.stdout

    def flwr_json(self, *arguments: str) -> dict[str, Any]:
        """A ``flwr ... --format json`` command's answer."""
        text = self.flwr(*arguments, "--format", "json")
        start = text.index("{")
        return dict(json.loads(text[start:]))

    def register(self, public_keys: Mapping[str, Path], timeout: float = 120.0) -> None:
        """``flwr supernode register`` for each merchant, in parallel."""
        env = self.environment(self.root / "operator")
        started = {
            name: subprocess.Popen(
                [
                    str(BIN / "flwr"),
                    "supernode",
                    "register",
                    str(key),
                    CONNECTION,
                    "--name",
                    name,
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            for name, key in public_keys.items()
        }
        failures = []
        for name, popen in started.items():
            try:
                output, _ = popen.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                output, _ = popen.communicate()
            if popen.returncode != 0 or "registered successfully" not in output:
                failures.append(f"{name}: {output[-500:]}")
        if failures:
            raise RuntimeError(f"register: failed for {'; '.join(failures)}")

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink lists as online."""
        nodes = self.flwr_json("supernode", "ls", CONNECTION).get("nodes", [])
        return sum(1 for node in nodes if node.get("status") == "online")

    # -- merchant side ------------------------------------------------------------

    def start_merchant(
        self,
        name: str,
        node_config: Mapping[str, str],
        key: Path | None = None,
        insecure: bool = False,
        extra: list[str] | None = None,
    ) -> Process:
        """A merchant's SuperNode: TLS, its key, its data path and id in node_config."""
        home = self.root / "merchants" / name
        config = {"merchant-id": name, "cache-dir": str(home / "cache"), **node_config}
        ca = self.certs / certs.CA_CERT
        if key is None and not insecure:
            # TLS without a key: a merchant trying to join unauthenticated.
            command = [
                flower_executable("flower-supernode"),
                "--superlink",
                self.address,
                "--port",
                str(free_port()),
                "--node-config",
                node_config_text(config),
                "--root-certificates",
                str(ca),
            ]
        else:
            command = supernode_argv(
                self.address, config, ca, key, port=free_port(), insecure=insecure
            )
        return self.start(f"merchant-{name}", command + (extra or []), home / "flwr")

    def wait_online(self, names: list[str], timeout: float) -> dict[str, float]:
        """Seconds from each merchant's start until the SuperLink activated it."""
        seconds: dict[str, float] = {}

        def check() -> bool:
            for name in names:
                process = self.processes[f"merchant-{name}"]
                if name not in seconds and ONLINE_MARK in process.text():
                    seconds[name] = time.monotonic() - process.started
                if not process.alive() and name not in seconds:
                    raise RuntimeError(
                        f"merchant {name} exited with {process.popen.returncode}: "
                        f"{process.text()[-1500:]}"
                    )
            return len(seconds) == len(names)

        wait_for(check, timeout, f"activation of merchants {names}", every=0.1)
        return seconds

    # -- runs -----------------------------------------------------------------

    def start_run(self, name: str, run_config: Mapping[str, Any]) -> Process:
        """``flwr run . CONNECTION --stream`` with ``run_config``."""
        command = [
            str(BIN / "flwr"),
            "run",
            str(ROOT),
            CONNECTION,
            "--stream",
            "--run-config",
            run_config_text(run_config),
        ]
        return self.start(name, command, self.root / "operator")

    def wait_log(self, name: str, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in a process's log, waiting for it."""
        compiled = re.compile(pattern)
        process = self.processes[name]
        return wait_for(
            lambda: compiled.search(process.text()), timeout, f"{pattern!r} in {name}"
        )

    def wait_exit(self, name: str, timeout: float) -> int:
        """A process's exit code, waiting at most ``timeout`` seconds."""
        try:
            return self.processes[name].popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(
                f"wait: {name} still running after {timeout:.0f}s: "
                f"{self.processes[name].text()[-2000:]}"
            ) from error
