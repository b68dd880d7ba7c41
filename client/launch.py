"""``merchant-meta supernode``: a merchant's SuperNode, secure unless told otherwise.

    merchant-meta supernode --superlink superlink.example.com:9092 --ca ca.crt \\
        --key keys/merchant-7 --merchant-id merchant-7 --data /data/orders.csv

Builds and runs (``exec``) Flower's own ``flower-supernode`` command: TLS verified
against the operator's CA, the merchant's registered key, and the node config the
ClientApp reads (``merchant-id``, ``data-path``, ``data-format``, ``cache-dir`` and,
when given, ``market`` and the table's column names). ``--insecure`` is the only way to
connect in plaintext (Flower then cannot authenticate the merchant), and it logs a
WARNING; ``--dry-run`` prints the command instead of running it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from client.cache import default_cache_dir

logger = logging.getLogger(__name__)

INSECURE_WARNING = (
    "launch: PLAINTEXT, as asked with --insecure: traffic is not encrypted and the "
    "merchant is not authenticated"
)


def flower_executable(name: str) -> str:
    """Flower's command ``name`` beside this Python, else on the PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def require_files(*paths: Path) -> None:
    """Fail with the missing file's name before Flower fails less clearly."""
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise typer.BadParameter(f"expected file(s) {', '.join(missing)}; not found")


def node_config_text(values: Mapping[str, str]) -> str:
    """``--node-config`` text: every value a quoted (TOML basic) string."""
    for key, value in values.items():
        if any(character in value for character in "'\"\\"):
            raise typer.BadParameter(
                f"{key}: quotes and backslashes are not allowed, got {value!r}"
            )
    return " ".join(f'{key}="{value}"' for key, value in values.items())


def supernode_argv(
    superlink: str,
    node_config: Mapping[str, str],
    ca: Path | None = None,
    key: Path | None = None,
    port: int = 9094,
    insecure: bool = False,
) -> list[str]:
    """The ``flower-supernode`` command line the runbook documents."""
    argv = [
        flower_executable("flower-supernode"),
        "--superlink",
        superlink,
        "--port",
        str(port),
        "--node-config",
        node_config_text(node_config),
    ]
    if insecure:
        logger.warning(INSECURE_WARNING)
        return [*argv, "--insecure"]
    if ca is None or key is None:
        raise typer.BadParameter("--ca and --key are required unless --insecure")
    return [
        *argv,
        "--root-certificates",
        str(ca),
        "--auth-supernode-private-key",
        str(key),
    ]


def supernode_command(
    superlink: Annotated[str, typer.Option(help="The SuperLink's HOST:PORT.")],
    merchant_id: Annotated[str, typer.Option(help="This merchant's id.")],
    data: Annotated[Path, typer.Option(help="This merchant's interaction log.")],
    ca: Annotated[
        Path | None, typer.Option(help="The operator's ca.crt (TLS).")
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="This merchant's private key (registered).")
    ] = None,
    data_format: Annotated[
        str, typer.Option("--format", help="table | xmarket")
    ] = "table",
    market: Annotated[
        str | None, typer.Option(help="Market, when the log holds several.")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where parsed data is cached.")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="More node config, KEY=VALUE (repeat): user-col, item-col, time-col, "
            "value-col, market-col.",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Local port for the ClientApp.")] = 9094,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext, unauthenticated.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the command, do not run it.")
    ] = False,
) -> None:
    """Start this merchant's SuperNode with TLS, its key and its data in node config."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not insecure:
        require_files(*(path for path in (ca, key) if path is not None))
    require_files(data)
    node_config = {
        "merchant-id": merchant_id,
        "data-path": str(data.expanduser().resolve()),
        "data-format": data_format,
        "cache-dir": str(cache_dir or default_cache_dir()),
    }
    if market is not None:
        node_config["market"] = market
    for setting in settings or []:
        name, equals, value = setting.partition("=")
        if not equals or not name.strip():
            raise typer.BadParameter(f"--set: expected KEY=VALUE, got {setting!r}")
        node_config[name.strip()] = value.strip()
    argv = supernode_argv(superlink, node_config, ca, key, port, insecure)
    typer.echo(shlex.join(argv))
    if not dry_run:
        os.execv(argv[0], argv)
