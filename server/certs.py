"""TLS certificates and merchant keys for a deployment, made with ``cryptography``.

    merchant-meta certs init --san superlink.example.com --san 10.0.0.5 --out certs
    merchant-meta certs merchant merchant-7 --out certs/merchants

``init`` makes a certificate authority and the SuperLink's certificate, signed by it,
valid for the names and addresses the SuperNodes dial (the SANs: a TLS client checks
the name it connected to against them, so a missing one fails the handshake).
Merchants receive ``ca.crt`` only. ``merchant`` makes a merchant's authentication key
pair in the form Flower registers: an EC key on a NIST curve (P-384), the private key in
OpenSSH format for ``flower-supernode --auth-supernode-private-key`` and the public key
as one OpenSSH line for ``flwr supernode register``.

Private keys are created with owner-only permissions (0600) from the first byte, and no
existing file is replaced unless ``--force`` is given.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
_MERCHANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

cli = typer.Typer(
    name="certs",
    help="TLS certificates for the SuperLink and merchants' authentication keys.",
    no_args_is_help=True,
    add_completion=False,
)


class CertificateError(ValueError):
    """A certificate or key request that cannot be carried out as asked."""


@dataclass(frozen=True)
class PemFile:
    """One file to write: its path, its bytes and whether it is a secret."""

    path: Path
    content: bytes
    private: bool


# ---------------------------------------------------------------------------
# Making keys and certificates
# ---------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    """A P-384 key: a NIST curve, which Flower's node authentication requires."""
    return ec.generate_private_key(ec.SECP384R1())


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def parse_san(value: str) -> x509.GeneralName:
    """A subject alternative name: an IP address when it parses as one, else DNS."""
    text = value.strip()
    if not text:
        raise CertificateError("san: expected a DNS name or an IP address, got ''")
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.*-]*[A-Za-z0-9])?", text):
        raise CertificateError(
            f"san: expected a DNS name (letters, digits, '-', '.') or an IP address, "
            f"got {value!r}"
        )
    return x509.DNSName(text)


def make_authority(
    common_name: str = "merchant-meta CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed certificate authority that signs the SuperLink's certificate."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    return key, certificate


def make_server_certificate(
    authority_key: ec.EllipticCurvePrivateKey,
    authority: x509.Certificate,
    sans: list[str],
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's key and certificate, valid for every name in ``sans``."""
    if not sans:
        raise CertificateError(
            "san: expected at least one name or address the merchants dial, got none"
        )
    names = [parse_san(san) for san in sans]
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0].strip())])
        )
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority_key.public_key()
            ),
            critical=False,
        )
        .sign(authority_key, hashes.SHA384())
    )
    return key, certificate


def merchant_key_files(name: str, directory: Path) -> list[PemFile]:
    """A merchant's key pair as Flower reads it: OpenSSH private key and public line."""
    if not _MERCHANT_NAME.fullmatch(name):
        raise CertificateError(
            f"merchant name: expected 1 to 64 letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return [
        PemFile(directory / name, private, private=True),
        PemFile(directory / f"{name}.pub", public + f" {name}\n".encode(), False),
    ]


def authority_files(sans: list[str], directory: Path, days: int) -> list[PemFile]:
    """The CA and the SuperLink's certificate and keys, ready to write."""
    authority_key, authority = make_authority()
    server_key, server = make_server_certificate(authority_key, authority, sans, days)
    pem = serialization.Encoding.PEM
    return [
        PemFile(directory / CA_CERT, authority.public_bytes(pem), private=False),
        PemFile(directory / CA_KEY, _private_pem(authority_key), private=True),
        PemFile(directory / SERVER_CERT, server.public_bytes(pem), private=False),
        PemFile(directory / SERVER_KEY, _private_pem(server_key), private=True),
    ]


# ---------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------


def write_files(files: list[PemFile], force: bool = False) -> None:
    """Write every file, or none of them when one exists already and not ``force``.

    Each file is written to a temporary file created with its final permissions in
    the same directory, then renamed into place: a secret is never readable by
    others, not even for a moment, and a crash never leaves half a key.
    """
    existing = [str(f.path) for f in files if f.path.exists()]
    if existing and not force:
        raise CertificateError(
            f"certs: {', '.join(existing)} exist(s); refusing to overwrite without "
            "--force"
        )
    for file in files:
        file.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=file.path.parent, prefix=".certs-")
        try:
            os.fchmod(handle, PRIVATE_MODE if file.private else PUBLIC_MODE)
            with os.fdopen(handle, "wb") as stream:
                stream.write(file.content)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, file.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.info(
            "certs: wrote %s (%s)", file.path, "private" if file.private else "public"
        )


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _fail(error: CertificateError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=2)


@cli.command("init")
def init_command(
    san: Annotated[
        list[str],
        typer.Option(
            "--san",
            help="A DNS name or IP address merchants dial to reach the SuperLink "
            "(repeat for several).",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory for the files.")] = Path("certs"),
    days: Annotated[int, typer.Option(help="Validity of the server cert.")] = 825,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing files.")
    ] = False,
) -> None:
    """Make a CA (ca.crt, ca.key) and the SuperLink's certificate (server.pem/.key)."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        write_files(authority_files(san, out, days), force=force)
    except CertificateError as error:
        raise _fail(error) from error
    typer.echo(
        f"SuperLink: --ssl-ca-certfile {out / CA_CERT} --ssl-certfile "
        f"{out / SERVER_CERT} --ssl-keyfile {out / SERVER_KEY}\n"
        f"Give merchants {out / CA_CERT} only; keep {out / CA_KEY} offline."
    )


@cli.command("merchant")
def merchant_command(
    name: Annotated[str, typer.Argument(help="The merchant's name, e.g. merchant-7.")],
    out: Annotated[Path, typer.Option(help="Directory for the key pair.")] = Path(
        "certs/merchants"
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing files.")
    ] = False,
) -> None:
    """Make a merchant's authentication key pair (NAME and NAME.pub)."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        files = merchant_key_files(name, out)
        write_files(files, force=force)
    except CertificateError as error:
        raise _fail(error) from error
    typer.echo(
        f"operator: flwr supernode register {files[1].path} CONNECTION --name {name}\n"
        f"merchant: flower-supernode --auth-supernode-private-key {files[0].path} ..."
    )
