"""``merchant-meta superlink``: the operator's SuperLink, secure unless told otherwise.

    merchant-meta superlink --certs certs --database state/superlink.db --port 9092

Builds and runs (``exec``) Flower's own ``flower-superlink`` command with TLS (the CA
and the certificate ``merchant-meta certs init`` made), merchant authentication
(``--enable-supernode-auth``: only registered keys may join), a state database (runs
survive a restart) and no runtime dependency installation. ``--insecure`` is the only
way to drop TLS and authentication, and it logs a WARNING; ``--dry-run`` prints the
command instead of running it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from server import certs

logger = logging.getLogger(__name__)

INSECURE_WARNING = (
    "launch: PLAINTEXT and UNAUTHENTICATED, as asked with --insecure: traffic is not "
    "encrypted and any machine can join as a merchant"
)


def flower_executable(name: str) -> str:
    """Flower's command ``name`` beside this Python, else on the PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def superlink_argv(
    certs_dir: Path,
    database: Path,
    host: str = "0.0.0.0",
    port: int = 9092,
    insecure: bool = False,
) -> list[str]:
    """The ``flower-superlink`` command line the runbook documents."""
    argv = [
        flower_executable("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(database),
        "--disable-runtime-dependency-installation",
    ]
    if insecure:
        logger.warning(INSECURE_WARNING)
        return [*argv, "--insecure"]
    return [
        *argv,
        "--ssl-ca-certfile",
        str(certs_dir / certs.CA_CERT),
        "--ssl-certfile",
        str(certs_dir / certs.SERVER_CERT),
        "--ssl-keyfile",
        str(certs_dir / certs.SERVER_KEY),
        "--enable-supernode-auth",
    ]


def require_files(*paths: Path) -> None:
    """Fail with the missing file's name before Flower fails less clearly."""
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise typer.BadParameter(f"expected file(s) {', '.join(missing)}; not found")


def superlink_command(
    certs_dir: Annotated[
        Path, typer.Option("--certs", help="Directory of `merchant-meta certs init`.")
    ] = Path("certs"),
    database: Annotated[
        Path, typer.Option(help="SQLite state: runs and merchants survive restarts.")
    ] = Path("state/superlink.db"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[
        int, typer.Option(help="One port for merchants and operator.")
    ] = 9092,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS, no merchant authentication.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the command, do not run it.")
    ] = False,
) -> None:
    """Start the SuperLink with TLS, merchant authentication and a state database."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not insecure:
        require_files(
            certs_dir / certs.CA_CERT,
            certs_dir / certs.SERVER_CERT,
            certs_dir / certs.SERVER_KEY,
        )
    argv = superlink_argv(certs_dir, database, host, port, insecure)
    typer.echo(shlex.join(argv))
    if dry_run:
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    os.execv(argv[0], argv)
