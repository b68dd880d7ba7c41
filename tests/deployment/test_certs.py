"""Certificates and merchant keys: what Flower reads, owner-only secrets, kept."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from server import certs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ca_and_a_server_certificate_for_the_given_names(
    tmp_path: Path,
) -> None:
    # Prepare
    sans = ["superlink.example.com", "10.0.0.5", "127.0.0.1"]

    # Execute
    certs.write_files(certs.authority_files(sans, tmp_path, days=30))

    # Assert: the server certificate names exactly the SANs and the CA signed it.
    authority = x509.load_pem_x509_certificate((tmp_path / certs.CA_CERT).read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / certs.SERVER_CERT).read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == ["superlink.example.com"]
    assert names.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    server.verify_directly_issued_by(authority)
    constraints = authority.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is True

    # The server's key matches its certificate; secrets are owner-only.
    key = serialization.load_pem_private_key(
        (tmp_path / certs.SERVER_KEY).read_bytes(), None
    )
    assert key.public_key().public_numbers() == server.public_key().public_numbers()  # type: ignore[union-attr]
    assert _mode(tmp_path / certs.SERVER_KEY) == 0o600
    assert _mode(tmp_path / certs.CA_KEY) == 0o600
    assert _mode(tmp_path / certs.CA_CERT) == 0o644
    assert _mode(tmp_path / certs.SERVER_CERT) == 0o644


def test_a_merchant_key_pair_is_in_the_format_flower_registers(tmp_path: Path) -> None:
    # Execute
    files = certs.merchant_key_files("merchant-7", tmp_path)
    certs.write_files(files)

    # Assert: an OpenSSH EC private key on P-384 and its one-line public key.
    private = serialization.load_ssh_private_key(
        (tmp_path / "merchant-7").read_bytes(), None
    )
    public = serialization.load_ssh_public_key(
        (tmp_path / "merchant-7.pub").read_bytes()
    )
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert _mode(tmp_path / "merchant-7") == 0o600
    assert (tmp_path / "merchant-7.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    # Prepare: a key pair already there.
    certs.write_files(certs.merchant_key_files("m1", tmp_path))
    before = (tmp_path / "m1").read_bytes()

    # Execute / Assert: refused without force, the old key untouched.
    with pytest.raises(certs.CertificateError, match="refusing to overwrite"):
        certs.write_files(certs.merchant_key_files("m1", tmp_path))
    assert (tmp_path / "m1").read_bytes() == before

    # With force the key is replaced, still owner-only, and no temporary is left.
    certs.write_files(certs.merchant_key_files("m1", tmp_path), force=True)
    assert (tmp_path / "m1").read_bytes() != before
    assert _mode(tmp_path / "m1") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1", "m1.pub"]


@pytest.mark.parametrize("name", ["", "../evil", "a b", "-dash-first", "x" * 65])
def test_a_bad_merchant_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(certs.CertificateError, match="merchant name"):
        certs.merchant_key_files(name, tmp_path)


@pytest.mark.parametrize("san", ["", "under_score.example", "a b"])
def test_a_bad_san_is_refused(san: str) -> None:
    with pytest.raises(certs.CertificateError, match="san"):
        certs.parse_san(san)


def test_the_commands_write_files_and_refuse_a_second_init(tmp_path: Path) -> None:
    # Prepare: the certs group as `merchant-meta certs` mounts it.
    app = typer.Typer()
    app.add_typer(certs.cli, name="certs")
    runner = CliRunner()
    out = tmp_path / "certs"

    # Execute
    first = runner.invoke(
        app, ["certs", "init", "--san", "127.0.0.1", "--out", str(out)]
    )
    second = runner.invoke(
        app, ["certs", "init", "--san", "127.0.0.1", "--out", str(out)]
    )
    merchant = runner.invoke(
        app, ["certs", "merchant", "m9", "--out", str(out / "merchants")]
    )

    # Assert
    assert first.exit_code == 0, first.output
    assert second.exit_code == 2
    assert "refusing to overwrite" in second.output
    assert merchant.exit_code == 0, merchant.output
    assert sorted(p.name for p in (out / "merchants").iterdir()) == ["m9", "m9.pub"]
