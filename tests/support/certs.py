"""Test TLS material made with the `openssl` command: a CA and a server certificate signed by it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerCert:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str = "hexarch-test-ca") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    ca, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(ca),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return ca, key


def server_cert(directory: Path, ca: tuple[Path, Path], name: str, cn: str = "127.0.0.1") -> ServerCert:
    """A certificate for 127.0.0.1 / localhost signed by `ca`, written as NAME.crt / NAME.key."""
    ca_crt, ca_key = ca
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr)
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return ServerCert(ca_crt, cert, key)


def make_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """An RSA key pair (private, public) in PEM, e.g. for service-account tokens."""
    key, pub = directory / f"{name}.key", directory / f"{name}.pub"
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl("rsa", "-in", str(key), "-pubout", "-out", str(pub))
    return key, pub
