"""The launch wrappers: secure by default, plaintext only when asked, and warned."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import typer
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

from client import launch as merchant_launch
from server import certs
from server import launch as operator_launch


def _value(argv: list[str], option: str) -> str:
    """The value given to ``option`` on a command line."""
    return argv[argv.index(option) + 1]


def test_the_superlink_command_has_tls_authentication_and_a_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)

    argv = operator_launch.superlink_argv(Path("c"), Path("s/db"), "0.0.0.0", 9092)

    assert argv[0].endswith("flower-superlink")
    assert _value(argv, "--ssl-ca-certfile") == "c/ca.crt"
    assert _value(argv, "--ssl-certfile") == "c/server.pem"
    assert _value(argv, "--ssl-keyfile") == "c/server.key"
    assert _value(argv, "--database") == "s/db"
    assert "--enable-supernode-auth" in argv
    assert "--insecure" not in argv
    assert caplog.records == []


def test_an_insecure_superlink_is_explicit_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)

    argv = operator_launch.superlink_argv(Path("c"), Path("db"), insecure=True)

    assert "--insecure" in argv
    assert not any(
        a.startswith("--ssl") or a == "--enable-supernode-auth" for a in argv
    )
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "PLAINTEXT" in caplog.records[0].getMessage()


def test_the_supernode_command_verifies_tls_and_authenticates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    config = {"merchant-id": "m 7", "data-path": "/data/m 7.csv"}

    argv = merchant_launch.supernode_argv(
        "link.example:9092", config, Path("ca.crt"), Path("keys/m7"), port=9100
    )

    assert _value(argv, "--superlink") == "link.example:9092"
    assert _value(argv, "--root-certificates") == "ca.crt"
    assert _value(argv, "--auth-supernode-private-key") == "keys/m7"
    assert parse_config_args([_value(argv, "--node-config")]) == config
    assert "--insecure" not in argv
    assert caplog.records == []


def test_an_insecure_supernode_is_explicit_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)

    argv = merchant_launch.supernode_argv("h:1", {"merchant-id": "m"}, insecure=True)

    assert "--insecure" in argv
    assert "--auth-supernode-private-key" not in argv
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_a_secure_supernode_needs_its_ca_and_key() -> None:
    with pytest.raises(typer.BadParameter, match="--ca and --key"):
        merchant_launch.supernode_argv("h:1", {"merchant-id": "m"}, ca=Path("ca"))


@pytest.mark.parametrize("value", ["it's", 'say "hi"', "C:\\data"])
def test_node_config_values_that_would_break_quoting_are_refused(value: str) -> None:
    with pytest.raises(typer.BadParameter, match="data-path"):
        merchant_launch.node_config_text({"data-path": value})


def test_the_commands_name_missing_files_and_print_with_dry_run(
    tmp_path: Path,
) -> None:
    # Prepare: the two commands as `merchant-meta` mounts them, certificates made.
    app = typer.Typer()
    app.command("superlink")(operator_launch.superlink_command)
    app.command("supernode")(merchant_launch.supernode_command)
    runner = CliRunner()
    certs.write_files(certs.authority_files(["127.0.0.1"], tmp_path / "c", days=2))
    certs.write_files(certs.merchant_key_files("m7", tmp_path / "k"))
    data = tmp_path / "orders.csv"
    data.write_text("user,item,time\n")

    # Execute
    missing = runner.invoke(app, ["superlink", "--certs", str(tmp_path / "none")])
    link = runner.invoke(
        app, ["superlink", "--certs", str(tmp_path / "c"), "--dry-run"]
    )
    node = runner.invoke(
        app,
        [
            *("supernode", "--superlink", "127.0.0.1:9092", "--merchant-id", "m7"),
            *("--data", str(data), "--ca", str(tmp_path / "c" / "ca.crt")),
            *("--key", str(tmp_path / "k" / "m7"), "--set", "user-col=customer"),
            "--dry-run",
        ],
    )

    # Assert
    assert missing.exit_code == 2
    assert "ca.crt" in missing.output
    assert link.exit_code == 0 and "--enable-supernode-auth" in link.output
    assert node.exit_code == 0 and "--auth-supernode-private-key" in node.output
    assert f"data-path={data}" in node.output.replace('"', "")
    assert "user-col=customer" in node.output.replace('"', "")
